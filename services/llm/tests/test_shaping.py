from __future__ import annotations

import random
import re

import pytest

from parley.testing import chunked
from parley_llm.shaping import SpeechShaper


def shape(*deltas: str) -> str:
    shaper = SpeechShaper()
    return "".join(shaper.push(d) for d in deltas) + shaper.flush()


@pytest.mark.parametrize(
    ("deltas", "spoken"),
    [
        ((" Paris", " is", " lovely."), "Paris is lovely."),
        (("**Hel", "lo** wor", "ld"), "Hello world"),
        (("Tips:\n- Drink", " water\n- Sleep", " well"), "Tips: Drink water Sleep well"),
        # An ordered list's numbers are content: "step 2" is worth hearing.
        (("Steps:\n1. Boil\n2", ". Pour"), "Steps: 1. Boil 2. Pour"),
        (("Great! 😀 Let's", " go"), "Great! Let's go"),
        (("## Title\nText `code` here",), "Title Text code here"),
        (("It costs 42 dollars, in 2024.",), "It costs 42 dollars, in 2024."),
        (("well-known -", " fine"), "well-known - fine"),
        (("<strong", ">Paris</str", "ong> is <em>nice</em>."), "Paris is nice."),
    ],
)
def test_markdown_goes_text_stays(deltas: tuple[str, ...], spoken: str) -> None:
    assert shape(*deltas) == spoken


@pytest.mark.parametrize(
    "text",
    [
        "I love you <3. See you tomorrow",
        "a < b and c > d",
        "We are #1 and # is a hash",
        "5 * 3 = 15",
        "Pi is 3.14, a bit over 1,000 tenths of 0.00314.",
        "snake_case_name and a|b and ~tilde",
        "100% & $5 at 20°C for 3€, AT&T",
        "I saw Dr. Smith, Mr. Jones, e.g. at 10 a.m. in the U.S.",
        "+5 degrees by day",
        "-3 at night",
        "•bullet-like but not a bullet",
    ],
)
def test_text_that_only_looks_like_markup_is_kept_whole(text: str) -> None:
    assert shape(text) == text
    assert shape(*text) == text
    # ... and is not held back as if it might still become markup.
    shaper = SpeechShaper()
    assert shaper.push(text + " and more") == text + " and mor"


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        # These could still become markup until their line ends; then they are text.
        ("if x<y then stop", "if x<y then stop"),
        ("5 *3 = 15 and 2 * 2 = 4", "5 *3 = 15 and 2 * 2 = 4"),
        # Markup goes, its words stay.
        ("This is *very* __important__ and ~~old~~ new", "This is very important and old new"),
        ("run `ls -la` now", "run ls -la now"),
        ("use ``a ` tick`` here", "use a ` tick here"),
        ("See [the docs](https://example.com/docs) and ![a cat](cat.png).", "See the docs and a cat."),
        ("Tags: <b>bold</b>, <div class='x'>block</div>, line<br/>break", "Tags: bold, block, line break"),
        ("Escaped \\*stars\\* stay", "Escaped *stars* stay"),
        ("Not a link: \\[x](y), not a tag: \\<b>", "Not a link: [x](y), not a tag: <b>"),
        ("Fish &amp; chips &copy; me", "Fish & chips © me"),
        ("# Title\n## Sub ##\n###### Six\n### ###\n# #hashtag #", "Title Sub Six #hashtag"),
        ("Shopping:\n- eggs\n* milk\n+ bread\n• jam", "Shopping: eggs milk bread jam"),
        ("1. Apples\n2) Pears\n10. Plums", "1. Apples 2) Pears 10. Plums"),
        ("> Quoted *wisdom*\n> > nested\n>- item", "Quoted wisdom nested item"),
        ("Intro\n\n---\n***\n_ _ _\n\nOutro", "Intro Outro"),
        ("Title\n=====\nBody", "Title Body"),
        ("```python\nprint('hi')\nx = a*b\n```\nDone", "print('hi') x = a*b Done"),
        ("~~~\n# not a heading\n~~~", "# not a heading"),
        ("```\nx = *a* + `b` <i>\n```", "x = *a* + `b` <i>"),
        ("| Name | Age |\n|------|:---:|\n| Bob | 42 |\n| *Al* | 7 |", "Name, Age Bob, 42 Al, 7"),
        ("line one\r\nline two", "line one line two"),
    ],
)
def test_text_is_shaped_for_speech(text: str, spoken: str) -> None:
    assert shape(text) == spoken


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("Nice 👍🏽 work", "Nice work"),  # skin tone
        ("Family 👨‍👩‍👧 time", "Family time"),  # ZWJ sequence
        ("Bonjour 🇫🇷!", "Bonjour !"),  # flag
        ("Press 1️⃣ or #️⃣ now", "Press or now"),  # keycaps
        ("Love ❤️ it ☀ 🏳️‍🌈 🏴󠁧󠁢󠁳󠁣󠁴󠁿 ok", "Love it ok"),
        ("#1 fan: 20°C, 5% off, €3 & $4", "#1 fan: 20°C, 5% off, €3 & $4"),
    ],
)
def test_emoji_are_removed_symbols_stay(text: str, spoken: str) -> None:
    assert shape(text) == spoken
    assert shape(*text) == spoken  # an emoji split across deltas still goes whole


REPLIES = [
    "Sure! Here are **three** tips for sleep:\n\n1. Keep a *regular* schedule.\n- Avoid `screens`; the light"
    " keeps you awake.\n- See [the guide](https://example.com/sleep) 😴\n\nDr. Smith says 7.5 hours, i.e. 450 minutes!",
    "## Paris\nThe capital of France, as you know, is **Paris** (about 2.1 million people). I love you <3.",
    "| City | People |\n|---|---:|\n| Paris | 2,100,000 |\n| Lyon | 520,000 |\nThat's it 👍🏽",
    "```bash\nls -la | grep *.py\n```\nThen run `make test` & check a < b, x<y, 5 * 3 = 15 and 5 *3 = 15.",
    "> **Note:** use <b>bold</b> text, ~~not~~ _this_, or __that__; snake_case_name stays.\n* one\n* two",
    "Edge cases: \\*escaped\\*, [unclosed link, `unclosed code, <unclosed tag, &amp; &#35; &nbsp &bogus; "
    "**bold\ncontinues** on the next line ![alt *text*](x.png) [ref][1] 🇫🇷🇩🇪 1️⃣ 👨‍👩‍👧\n***\n",
]


@pytest.mark.parametrize("reply", REPLIES)
def test_any_split_into_deltas_gives_the_same_text(reply: str) -> None:
    whole = shape(reply)
    assert shape(*reply) == whole
    rng = random.Random(1234)
    for longest in (2, 3, 5, 8, 13):
        assert shape(*chunked(reply, rng, longest)) == whole


def test_random_markdown_streams_like_it_reads() -> None:
    atoms = [*"*_`[<>&\\#|", "**", "__", "~~", "``", "```", "](u)", "![", "<b>", "</b>", "&amp;", "<3"]
    atoms += ["## ", "- ", "> ", "\n", "\n\n", " ", " ", "word", "1,000", "3.14", "👍🏽", "🇫🇷", "1️⃣"]
    rng = random.Random(20240601)
    for _ in range(300):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(1, 30)))
        whole = shape(text)
        assert shape(*text) == whole, text
        assert shape(*chunked(text, rng, 4)) == whole, text


@pytest.mark.parametrize("reply", REPLIES)
def test_every_word_survives(reply: str) -> None:
    # Words of the reply, less what is not text: URLs, image files, tags, entities, fence languages.
    markup = {"https", "example", "com", "sleep", "x", "png", "bash", "b", "1", "amp", "35"}
    words = [w for w in re.findall(r"[^\W_]+", reply) if w not in markup]
    spoken = re.findall(r"[^\W_]+", shape(reply))
    assert [w for w in spoken if w in set(words)] == words


def test_the_first_clause_leaves_before_its_sentence_ends() -> None:
    shaper = SpeechShaper()
    out = ""
    for delta in ["**Well**", ",", " the", " capital", " of", " *France*", ",", " as", " you", " know"]:
        out += shaper.push(delta)
    assert out.startswith("Well, the capital of France, as you")  # at most one character held back
    out += shaper.push(", is Paris.") + shaper.flush()
    assert out == "Well, the capital of France, as you know, is Paris."


def test_plain_text_is_held_back_two_characters_at_most() -> None:
    shaper = SpeechShaper()
    text = "The answer is 42, and that is final. Really, it is!"
    out = ""
    for index, char in enumerate(text):
        out += shaper.push(char)
        # The last character waits for the next one (it could start markup), a digit for one more
        # (it could start a keycap emoji), and a space for the word after it.
        assert text.startswith(out)
        assert len(out) >= len(text[: max(index - 1, 0)].rstrip())


def test_an_unclosed_marker_holds_back_its_line_only() -> None:
    shaper = SpeechShaper()
    line = "Compute 5 *3 first" + " and then some more words" * 20
    out = shaper.push(line)
    assert out == "Compute 5"  # "*3 ..." may still become emphasis
    out += shaper.push("\nNext line")
    assert out == line + " Next lin"  # the line end releases it as literal text
    assert out + shaper.flush() == line + " Next line"


@pytest.mark.parametrize("opener", ["`", "[", "<b", "x<y", "**", "![x"])
def test_held_back_text_is_bounded_by_the_line(opener: str) -> None:
    shaper = SpeechShaper()
    line = f"before {opener}after" + " word" * 50
    out = shaper.push(line)
    assert out.startswith("before") and len(out) < len("before ") + 2
    out += shaper.push("\n")
    assert len(out) > len(line) - 10  # released at the line's end, not at the reply's end


def test_flush_resets_for_a_new_reply() -> None:
    shaper = SpeechShaper()
    assert shaper.push("```\ncode *a*") + shaper.flush() == "code *a*"
    assert shaper.push("*new* reply") + shaper.flush() == "new reply"


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        # Chinese and Japanese put no space between words or after a sentence: a wrapped line joins without one.
        ("今天天气\n很好。", "今天天气很好。"),
        ("## 天气\n\n今天**很好**。\n明天会下雨！", "天气 今天很好。明天会下雨！"),  # the heading keeps its separator
        ("日本語です。\nこんにちは", "日本語です。こんにちは"),
        ("第一段。\n\n第二段", "第一段。第二段"),
        ("- 第一点\n- 第二点", "第一点 第二点"),  # list items stay apart
        ("<p>你好</p><p>世界</p>", "你好 世界"),
        ("你好。 我", "你好。 我"),  # a space the text itself has stays
        # Languages written with spaces are shaped as they always were.
        ("안녕하세요.\n반갑습니다", "안녕하세요. 반갑습니다"),
        ("Bonjour ! Ça va ?\nOui.", "Bonjour ! Ça va ? Oui."),
        ("¿Qué tal?\n¡Bien!", "¿Qué tal? ¡Bien!"),
    ],
)
def test_cjk_and_other_languages_are_shaped_without_breaking_them(text: str, spoken: str) -> None:
    assert shape(text) == spoken
    assert shape(*text) == spoken  # however the deltas come
