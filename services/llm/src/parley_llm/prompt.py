"""Prompt building shared by every backend: history within a token budget,
and the dialogue-transcript format for base models that have no chat template."""

from __future__ import annotations

from collections.abc import Callable

from parley_llm.engines.base import ChatMessage

LABELS = {"user": "User", "assistant": "Assistant"}
# Where a base model starts writing the user's next line, the reply is over.
TRANSCRIPT_STOPS = ["\nUser:", "User:", "\n\n", "\nAssistant:"]


def spoken_turns(messages: list[ChatMessage]) -> list[ChatMessage]:
    """The conversation as a model should see it.

    Turns with no words are left out: a reply cut before the user heard any of
    it leaves an empty assistant turn, and a base model prompted with an empty
    "Assistant:" line answers the next question with nothing. Consecutive turns
    of one role are then joined, since chat templates demand alternating roles.
    """
    turns: list[ChatMessage] = []
    for message in messages:
        if not message.content.strip():
            continue
        if turns and turns[-1].role == message.role:
            turns[-1] = ChatMessage(message.role, f"{turns[-1].content}\n{message.content}")
        else:
            turns.append(message)
    return turns


def fit_history(
    messages: list[ChatMessage], budget_tokens: int, count_tokens: Callable[[list[ChatMessage]], int]
) -> list[ChatMessage]:
    """Drop the oldest turns (never the system prompt or the last message) until the prompt fits."""
    system = [m for m in messages if m.role == "system"]
    turns = [m for m in messages if m.role != "system"]
    while len(turns) > 1 and count_tokens(system + turns) > budget_tokens:
        turns = turns[1:]
    return system + turns


def transcript(messages: list[ChatMessage]) -> str:
    """A dialogue transcript ending where the assistant speaks next."""
    system = "\n".join(m.content.strip() for m in messages if m.role == "system")
    lines = [f"{LABELS[m.role]}: {' '.join(m.content.split())}" for m in messages if m.role in LABELS]
    head = f"{system}\n\n" if system else ""
    return head + "\n".join(lines) + f"\n{LABELS['assistant']}:"
