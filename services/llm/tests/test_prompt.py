from __future__ import annotations

from parley_llm.engines.base import ChatMessage
from parley_llm.prompt import fit_history, spoken_turns, transcript


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


def test_turns_without_words_are_left_out_and_same_role_turns_joined() -> None:
    """A reply cut before a word was heard must not teach the model to answer with nothing."""
    turns = spoken_turns(
        [
            ChatMessage("system", "Be brief."),
            ChatMessage("user", "Tell me a story."),
            ChatMessage("assistant", " "),
            ChatMessage("user", "What is two plus two?"),
        ]
    )
    assert turns == [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Tell me a story.\nWhat is two plus two?"),
    ]
    assert "Assistant: \n" not in transcript(turns)
