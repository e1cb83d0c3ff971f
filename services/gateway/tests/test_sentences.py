from __future__ import annotations

from parley_gateway.sentences import SentenceChunker


def feed(chunker: SentenceChunker, text: str) -> list[str]:
    out: list[str] = []
    for token in text.split(" "):  # arrive word by word, as LLM deltas do
        out += chunker.push(token + " ")
    return out + chunker.flush()


def test_first_piece_leaves_at_a_long_enough_clause() -> None:
    chunker = SentenceChunker(first_clause_min_chars=15)
    pieces = feed(chunker, "Well, the capital of France, as you know, is Paris. It is lovely, really.")
    assert pieces == ["Well, the capital of France,", "as you know, is Paris.", "It is lovely, really."]


def test_short_clauses_wait_for_the_sentence() -> None:
    assert feed(SentenceChunker(50), "Yes, sure. Anything else?") == ["Yes, sure.", "Anything else?"]


def test_text_without_punctuation_is_flushed_at_the_end() -> None:
    assert feed(SentenceChunker(20), "just some words") == ["just some words"]
