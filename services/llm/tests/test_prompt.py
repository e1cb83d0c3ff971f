from __future__ import annotations

from parley_llm.engines.base import ChatMessage
from parley_llm.prompt import fit_history, transcript


def test_transcript_ends_where_the_assistant_speaks() -> None:
    prompt = transcript(
        [
            ChatMessage("system", "Be brief."),
            ChatMessage("user", "Hi  there\n friend"),
            ChatMessage("assistant", "Hello!"),
            ChatMessage("user", "How are you?"),
        ]
    )
    assert prompt == "Be brief.\n\nUser: Hi there friend\nAssistant: Hello!\nUser: How are you?\nAssistant:"


def test_fit_history_drops_oldest_turns_but_keeps_system_and_last() -> None:
    messages = [ChatMessage("system", "s")] + [ChatMessage("user", f"turn {i}") for i in range(10)]

    def count(ms: list[ChatMessage]) -> int:
        return len(ms) * 10

    fitted = fit_history(messages, 40, count)
    assert fitted[0].role == "system"
    assert [m.content for m in fitted[1:]] == ["turn 7", "turn 8", "turn 9"]
    # Even an over-budget last message is kept.
    assert fit_history(messages, 1, count)[-1].content == "turn 9"
