"""FireRedTTS2's text handling against the package's own (fireredtts2/utils/spliter.py), as upstream HEAD has it.

The engine has its own implementation; these tests run both on the same texts, with the package's symbol
table patched to HEAD's where the PyPI copy (0.1.0) is older: HEAD drops the curly double quotes “ ”, the
package turns them into an apostrophe.
"""

from __future__ import annotations

import random
import types

import pytest

import parley_tts.engines.fireredtts2  # noqa: F401  (makes the package's submodules importable)
from parley_tts.engines.fireredtts2_text import (
    clean_text,
    split_monologue,
    split_turn,
    strip_control_tokens,
)


@pytest.fixture
def spliter(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    from fireredtts2.utils import spliter

    monkeypatch.setitem(spliter.SYMBOLS_MAPPING, "“", "")  # as upstream HEAD
    monkeypatch.setitem(spliter.SYMBOLS_MAPPING, "”", "")
    module: types.ModuleType = spliter
    return module


def test_clean_text_is_heads_not_the_packages() -> None:
    from fireredtts2.utils import spliter

    text = " “Quoted” — said: (she)… ok!! 3.14 [S1] 😀 "
    assert spliter.clean_text(text) == "'Quoted'  said, she, ok!! 3.14 S1 "  # the PyPI package (0.1.0)
    assert clean_text(text) == "Quoted  said, she, ok!! 3.14 S1 "  # HEAD: the quotes go
    assert clean_text("Wait... what,, now“.”.") == "Wait. what, now."


def corpus(seed: int, count: int) -> list[str]:
    """Texts made of what the splitters treat specially: sentence ends, commas, decimals, CJK, emoji, symbols."""
    pieces = list('abc de fgh ij.,!?;:“”‘’【】[]（）()・·「」《》—～~：；"！*\n\t\xa0…。！？，、你好世界')
    pieces += ["😀", "🚀", "  ", "...", ",,", "——", "……", "1.5", "3.14", "[S1]", "<|laugh|>", "word ", "words. "]
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        if rng.random() < 0.3:
            words = ["word", "another", "x.", "y?", "z!", "3.14", "a,b", "end."]
            texts.append(" ".join(rng.choice(words) for _ in range(rng.choice([10, 80, 81, 200]))))
        else:
            texts.append("".join(rng.choice(pieces) for _ in range(rng.choice([3, 40, 160, 420, 900]))))
    return texts


def test_the_splitters_split_as_upstreams(spliter: types.ModuleType) -> None:
    split = {"turns": 0, "pieces": 0}
    for text in corpus(0, 400):
        assert clean_text(text) == spliter.clean_text(text)
        for limit in (400, 60):
            assert split_monologue(text, limit) == spliter.split_text(text, limit)
        assert split_turn(text) == spliter.process_text(text)
        assert split_turn("[S2]" + text) == spliter.process_text("[S2]" + text)
        split["turns"] += len(split_turn(text)) > 1
        split["pieces"] += len(split_monologue(text)) > 1
    assert split["turns"] > 50 and split["pieces"] > 50  # the corpus does reach the splitting paths


def test_dialogue_turns_split_at_80_words_or_150_cjk_characters() -> None:
    sentence = "One two three four five six seven eight nine ten."
    assert split_turn(" ".join([sentence] * 8)) == [" ".join([sentence] * 8)]  # 80 words: whole
    assert split_turn(" ".join([sentence] * 9)) == [" ".join([sentence] * 8), sentence]
    chinese = "你好世界，这是一个句子。" * 13  # 156 characters
    assert split_turn(chinese) == ["你好世界，这是一个句子。" * 12, "你好世界，这是一个句子。"]
    assert split_turn("[S1]  Hello.  ") == ["Hello."]  # a leading tag goes, as upstream's


def test_long_sentences_split_only_when_asked() -> None:
    long = ", ".join(" ".join(["word"] * 30) for _ in range(4)) + "."  # one 120-word sentence
    assert split_turn(long) == [long]  # upstream leaves it whole
    pieces = split_turn(long, split_long_sentences=True)
    assert [len(piece.split()) for piece in pieces] == [60, 60] and " ".join(pieces) == long
    unbroken = " ".join(["word"] * 170)
    assert [len(p.split()) for p in split_turn(unbroken, split_long_sentences=True)] == [80, 80, 10]
    chinese = "字" * 320
    assert [len(p) for p in split_turn(chinese, split_long_sentences=True)] == [150, 150, 20]


def test_monologue_pieces_stay_within_400_bytes() -> None:
    text = " ".join(["This is a sentence of a long text, read in a cloned voice."] * 20)
    pieces = split_monologue(text)
    assert len(pieces) == 4 and all(len(piece.encode()) <= 400 for piece in pieces)
    assert " ".join(pieces) == text
    assert split_monologue("It costs 3.14 dollars. Then more. " * 15)[0].count("3.14") >= 1  # decimals kept whole
    assert split_monologue("... !! ,") == []


def test_control_tokens_leave_user_text() -> None:
    text = "[S2]Hi <|text_end|>[S1] there<|text_start|> <|laugh|> [S12] [x]"
    assert strip_control_tokens(text) == "Hi  there <|laugh|>  [x]"  # paralinguistic tags stay
