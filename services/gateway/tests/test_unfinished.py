"""The word rules that keep a turn open at a pause although its intonation sounds final."""

from __future__ import annotations

import pytest

from parley_gateway.conversation.unfinished import Words, read_words


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
    assert read_words(text, "en") is Words.FINISHED


@pytest.mark.parametrize(
    "text",
    [
        "I would like to know the weather in",  # no closing mark
        "who wrote the famous album out",  # a first half misheard, without its full stop
        "What is a good present for?",  # a dangling preposition, whatever Whisper wrote after it
        "Can you tell me the way to the?",
        "Um.",
        "Where are you from?",  # a stranded preposition waits for the cap: the price of the rule
        "...",
        "",
        "So I was thinking about the weekend...",  # an ellipsis: the speech trails off
        "Je me demandais…",  # in any language
    ],
)
def test_unfinished_sentences(text: str) -> None:
    assert read_words(text, "en") is Words.UNFINISHED


@pytest.mark.parametrize(
    "text",
    [
        "What is the best way to kill?",  # "to" and a verb: its object may be still to come
        "Could you remind me to call?",
        "I want to learn how to play.",
        "Can you recommend a good book to read?",  # ... or the question is over
    ],
)
def test_an_infinitive_at_the_end_is_doubtful(text: str) -> None:
    assert read_words(text, "en") is Words.DOUBTFUL


def test_english_word_rules_apply_to_an_unknown_language_only_as_english() -> None:
    assert read_words("Is it far to walk?", "") is Words.DOUBTFUL
    assert read_words("What is the weather like in?", "en-US") is Words.UNFINISHED  # a tag of English
    assert read_words("What is the weather like in?", "") is Words.UNFINISHED
    assert read_words("Quel temps fait-il à Paris?", "fr") is Words.FINISHED
    assert read_words("Je voudrais aller to?", "fr") is Words.FINISHED  # the English rules stay out of French
    assert read_words("Je me demandais…", "fr") is Words.UNFINISHED


def test_closing_marks_of_other_scripts() -> None:
    assert read_words("明天巴黎的天气怎么样？", "zh") is Words.FINISHED
    assert read_words("東京はどこですか。", "ja") is Words.FINISHED
    assert read_words("«Qui a écrit ce livre?»", "fr") is Words.FINISHED
    assert read_words("明天巴黎的天气", "zh") is Words.UNFINISHED
