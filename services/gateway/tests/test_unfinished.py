"""The word rules that keep a turn open at a pause although its intonation sounds final."""

from __future__ import annotations

import pytest

from parley_gateway.conversation.unfinished import words_unfinished


@pytest.mark.parametrize(
    "text",
    [
        "What is the capital city of France?",
        "Tell me a fun fact about elephants.",
        "Hello!",
        "How far is it to Paris?",  # "to" and a name: the object is there
        "Count from one to 10.",
        'He said "stop."',
        "Why is the sky blue during the day?  ",
        "Wait, really?...",  # a closing mark before the dots: the sentence ended
    ],
)
def test_finished_sentences(text: str) -> None:
    assert not words_unfinished(text, "en")


@pytest.mark.parametrize(
    "text",
    [
        "I would like to know the weather in",  # no closing mark
        "who wrote the famous album out",  # a first half misheard, without its full stop
        "What is a good present for?",  # a dangling preposition, whatever Whisper wrote after it
        "Can you tell me the way to the?",
        "What is the best way to kill?",  # "to" and a verb: its object is still to come
        "Could you remind me to call?",
        "I want to learn how to play.",
        "Um.",
        "Where are you from?",  # a stranded preposition waits for the cap: the price of the rule
        "...",
        "",
        "So I was thinking about the weekend...",  # an ellipsis: the speech trails off
        "Je me demandais…",  # in any language
    ],
)
def test_unfinished_sentences(text: str) -> None:
    assert words_unfinished(text, "en")


def test_english_word_rules_apply_to_an_unknown_language_only_as_english() -> None:
    assert words_unfinished("Is it far to walk?", "")
    assert not words_unfinished("Quel temps fait-il à Paris?", "fr")
    assert not words_unfinished("Je voudrais aller to?", "fr")  # the English rules stay out of French
    assert words_unfinished("Je me demandais…", "fr")


def test_closing_marks_of_other_scripts() -> None:
    assert not words_unfinished("明天巴黎的天气怎么样？", "zh")
    assert not words_unfinished("東京はどこですか。", "ja")
    assert not words_unfinished("«Qui a écrit ce livre?»", "fr")
    assert words_unfinished("明天巴黎的天气", "zh")
