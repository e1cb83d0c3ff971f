from __future__ import annotations

import random

import pytest

from parley.testing import chunked
from parley_gateway.conversation.sentences import SentenceChunker


def feed(chunker: SentenceChunker, text: str) -> list[str]:
    out: list[str] = []
    for token in text.split(" "):  # arrive word by word, as LLM deltas do
        out += chunker.push(token + " ")
    return out + chunker.flush()


def feed_in(pieces: list[str], first_clause_min_chars: int, first_piece_max_words: int = 0) -> list[str]:
    chunker = SentenceChunker(first_clause_min_chars, first_piece_max_words=first_piece_max_words)
    out: list[str] = []
    for piece in pieces:
        out += chunker.push(piece)
    return out + chunker.flush()


def test_first_piece_leaves_at_a_long_enough_clause() -> None:
    chunker = SentenceChunker(first_clause_min_chars=15)
    pieces = feed(chunker, "Well, the capital of France, as you know, is Paris. It is lovely, really.")
    assert pieces == ["Well, the capital of France,", "as you know, is Paris.", "It is lovely, really."]


def test_short_clauses_wait_for_the_sentence() -> None:
    assert feed(SentenceChunker(50), "Yes, sure. Anything else?") == ["Yes, sure.", "Anything else?"]


def test_with_a_word_cap_a_long_first_clause_leaves_after_that_many_words() -> None:
    chunker = SentenceChunker(20, first_piece_max_words=4)
    pieces = feed(chunker, "The capital city France has is Paris, a lovely city. It has many museums to see.")
    assert pieces == ["The capital city France", "has is Paris, a lovely city.", "It has many museums to see."]
    # A phrase that starts within the cap starts the next piece, and the opening goes on to four words.
    pieces = feed(SentenceChunker(20, first_piece_max_words=4), "The capital of France is Paris, a lovely city.")
    assert pieces == ["The capital", "of France is Paris,", "a lovely city."]


def test_the_word_cap_never_splits_a_short_first_sentence_or_a_clause() -> None:
    assert feed(SentenceChunker(20, first_piece_max_words=4), "Sure! I can. Help is here.") == [
        "Sure!",
        "I can.",
        "Help is here.",
    ]
    # Past the cap the last clause mark wins however short, else the cut comes before a phrase's first word.
    assert feed(SentenceChunker(20, first_piece_max_words=4), "Well, that is a very good question.") == [
        "Well,",
        "that is",
        "a very good question.",
    ]
    assert feed(SentenceChunker(20, first_piece_max_words=4), "I think that a very good question.") == [
        "I think that",
        "a very good question.",
    ]
    assert feed(SentenceChunker(4, first_piece_max_words=4), "Of course, it is a very good question.") == [
        "Of course,",
        "it is",
        "a very good question.",
    ]
    assert feed(SentenceChunker(4, first_piece_max_words=2), "Of course, it is a very good question.") == [
        "Of course,",  # the opening's two words are out: the rest is one sentence
        "it is a very good question.",
    ]


def test_after_a_short_first_sentence_the_next_piece_leaves_early_too() -> None:
    text = 'Sure! The classic books to read are "To Kill a Mockingbird" and "1984". Both are great.'
    assert feed(SentenceChunker(20, first_piece_max_words=4), text) == [
        "Sure!",
        "The classic books",  # the opening's fourth word is "to": the cut comes before it
        'to read are "To Kill a Mockingbird" and "1984".',
        "Both are great.",
    ]
    assert feed(SentenceChunker(20), text) == [  # without a cap only the first piece is early
        "Sure!",
        'The classic books to read are "To Kill a Mockingbird" and "1984".',
        "Both are great.",
    ]


def test_with_a_word_cap_clauses_end_pieces_until_four_times_its_words_are_out() -> None:
    text = (
        "Sure! To make green tea, you boil some fresh water, then you pour it over the leaves in a cup, "
        "and you wait for three minutes. After that, you take the leaves out, and you can drink it."
    )
    assert feed(SentenceChunker(20, first_piece_max_words=4), text) == [
        "Sure!",
        "To make green tea,",  # the opening: at its last clause mark within four words
        "you boil some fresh water,",  # the lead-in: clause marks past 20 characters
        "then you pour it over the leaves in a cup,",
        "and you wait for three minutes.",  # 20 words out: whole sentences from here
        "After that, you take the leaves out, and you can drink it.",
    ]


def test_text_without_punctuation_is_flushed_at_the_end() -> None:
    assert feed(SentenceChunker(20), "just some words") == ["just some words"]


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("I saw Dr. Smith today. He was fine.", ["I saw Dr. Smith today.", "He was fine."]),
        ("Mr. and Mrs. Jones arrived. They sat.", ["Mr. and Mrs. Jones arrived.", "They sat."]),
        ("Bring fruit, e.g. apples or pears. Then go.", ["Bring fruit, e.g. apples or pears.", "Then go."]),
        ("The U.S. economy grew. Europe did not.", ["The U.S. economy grew.", "Europe did not."]),
        ("She lives in the U.S. She likes it.", ["She lives in the U.S.", "She likes it."]),
        ("Meet me at 10 a.m. tomorrow. Be early.", ["Meet me at 10 a.m. tomorrow.", "Be early."]),
        ("Pi is about 3.14. It never ends.", ["Pi is about 3.14.", "It never ends."]),
        ("It costs 1,000 dollars. That is a lot.", ["It costs 1,000 dollars.", "That is a lot."]),
        ("Well... I am not sure. Maybe.", ["Well... I am not sure.", "Maybe."]),
        ('He said "Hello there." Then he left.', ['He said "Hello there."', "Then he left."]),
        ("Really?! Yes. Fine!", ["Really?!", "Yes.", "Fine!"]),
        ("I love you <3. See you tomorrow", ["I love you <3.", "See you tomorrow"]),
    ],
)
def test_sentences_end_where_a_reader_would_end_them(text: str, pieces: list[str]) -> None:
    assert feed(SentenceChunker(first_clause_min_chars=1000), text) == pieces
    assert feed_in(list(text), 1000) == pieces


def test_a_clause_is_never_cut_inside_a_number() -> None:
    text = "It costs 1,000 or 3.14 dollars, more or less."
    assert feed_in(list(text), 3) == ["It costs 1,000 or 3.14 dollars,", "more or less."]


def test_the_first_clause_leaves_before_its_sentence_ends() -> None:
    chunker = SentenceChunker(first_clause_min_chars=15)
    deltas = ["Well", ",", " the", " capital", " of", " France", ",", " as", " you", " know", ",", " is", " Paris", "."]
    first_piece_at = next(i for i, delta in enumerate(deltas) if chunker.push(delta))
    assert deltas[first_piece_at] == " as"  # the whitespace after "France," suffices


def test_a_piece_without_a_letter_joins_the_next() -> None:
    pieces = feed_in(["Steps: 1. Boil water. 2. Pour it. 3. Enjoy."], 1000)
    assert all(any(char.isalpha() for char in piece) for piece in pieces)
    assert " ".join(pieces) == "Steps: 1. Boil water. 2. Pour it. 3. Enjoy."


def test_odd_spaces_do_not_stop_the_segmenter() -> None:
    # sentencex 1.0.32 panics on an uppercase letter, a non-ASCII space and a period.
    text = "Plan D\u00a0. Then E\u2009. Done."
    pieces = feed_in([text], 1000)
    assert pieces[0] == "Plan D\u00a0."
    assert " ".join(pieces) == text


def test_a_clause_never_reaches_past_a_sentence_end() -> None:
    assert feed_in(list("Yes. — I think so, maybe."), 0) == ["Yes.", "— I think so, maybe."]


def test_later_pieces_are_whole_sentences() -> None:
    text = "Well, the capital of France, as you know, is Paris. It is a lovely city, really, and big."
    pieces = ["Well, the capital of France,", "as you know, is Paris.", "It is a lovely city, really, and big."]
    assert feed_in([text], 15) == pieces


REPLIES = [
    "Well, the capital of France, as you know, is Paris. It is lovely, really. Dr. Smith lives there.",
    "I saw Dr. Smith at 10 a.m. today; he said the U.S. team won 3.14 to 1,000, e.g. a rout. Wow!",
    'She said "I am tired. Let us go home." Then she left... Really? Yes! (See page 2.) Fine.',
    "Steps: 1. Boil water 2. Pour it. 3. Wait — about 5 min. Done: enjoy, my friend.",
    "No punctuation at all here just words and more words",
    'A stray quote" here. And another sentence. And \u2018one\u2019 more\u2026 done.',
]


@pytest.mark.parametrize("reply", REPLIES)
@pytest.mark.parametrize("first_clause_min_chars", [0, 10, 40])
@pytest.mark.parametrize("first_piece_max_words", [0, 4])
def test_any_split_into_deltas_gives_the_same_pieces(
    reply: str, first_clause_min_chars: int, first_piece_max_words: int
) -> None:
    whole = feed_in([reply], first_clause_min_chars, first_piece_max_words)
    assert feed_in(list(reply), first_clause_min_chars, first_piece_max_words) == whole
    rng = random.Random(99)
    for longest in (2, 3, 5, 8):
        assert feed_in(chunked(reply, rng, longest), first_clause_min_chars, first_piece_max_words) == whole
    assert " ".join(whole).split() == reply.split()  # nothing lost, nothing added


def feed_language(text: str, language: str, first_clause_min_chars: int = 40, longest: int = 1) -> list[str]:
    chunker = SentenceChunker(first_clause_min_chars, language)
    out: list[str] = []
    for start in range(0, len(text), longest):
        out += chunker.push(text[start : start + longest])
    return out + chunker.flush()


@pytest.mark.parametrize(
    ("language", "text", "pieces"),
    [
        # No spaces between words or after sentences: cut after "。！？" themselves.
        (
            "zh",
            "今天天气很好。明天会下雨！你去吗？我不去。",
            ["今天天气很好。", "明天会下雨！", "你去吗？", "我不去。"],
        ),
        ("ja", "今日は晴れです。明日は雨！行きますか？", ["今日は晴れです。", "明日は雨！", "行きますか？"]),
        ("zh", "价格是3.5元。好的，谢谢。", ["价格是3.5元。", "好的，谢谢。"]),
        ("ko", "안녕하세요. 반갑습니다! 뭐해요?", ["안녕하세요.", "반갑습니다!", "뭐해요?"]),
        ("es", "¿Cómo estás? ¡Muy bien! Gracias, amigo.", ["¿Cómo estás?", "¡Muy bien!", "Gracias, amigo."]),
        # A space before "?" and "!", and « » quotes whose opening one is never left at a piece's end.
        (
            "fr",
            "Bonjour ! Ça va ? Oui, merci. « Très bien », dit-il.",
            ["Bonjour !", "Ça va ?", "Oui, merci.", "« Très bien », dit-il."],
        ),
        ("de", "Das ist z. B. gut. Ja!", ["Das ist z. B. gut.", "Ja!"]),
    ],
)
def test_sentences_of_other_languages(language: str, text: str, pieces: list[str]) -> None:
    assert feed_language(text, language) == pieces
    assert feed_language(text, language, longest=len(text)) == pieces  # however the deltas come
    rng = random.Random(7)
    chunker = SentenceChunker(40, language)
    out: list[str] = []
    for piece in chunked(text, rng, 4):
        out += chunker.push(piece)
    assert out + chunker.flush() == pieces


def test_a_chinese_first_clause_leaves_at_a_full_width_comma() -> None:
    text = "今天的天气非常好，阳光明媚，我们一起去公园散步吧。好的。"
    assert feed_language(text, "zh", first_clause_min_chars=8) == [
        "今天的天气非常好，",
        "阳光明媚，我们一起去公园散步吧。",
        "好的。",
    ]


def test_a_cjk_sentence_leaves_as_soon_as_the_next_one_starts() -> None:
    chunker = SentenceChunker(40, "zh")
    assert chunker.push("今天天气很好。") == []  # it may still go on ("。」")
    assert chunker.push("明") == ["今天天气很好。"]  # no whitespace ever comes: the next character is the look


@pytest.mark.parametrize(
    ("language", "text", "pieces"),
    [
        ("es", "La Sra. García vino. Bien.", ["La Sra. García vino.", "Bien."]),  # English rules cut at "Sra."
        ("de", "Am 3. Mai kam er. Ja.", ["Am 3. Mai kam er.", "Ja."]),  # a German ordinal, not a sentence end
    ],
)
def test_the_reply_language_picks_the_abbreviation_rules(language: str, text: str, pieces: list[str]) -> None:
    assert feed_language(text, language) == pieces
