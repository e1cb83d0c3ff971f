from __future__ import annotations

import pytest

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
        (("Steps:\n1. Boil\n2", ". Pour"), "Steps: Boil Pour"),
        (("Great! 😀 Let's", " go"), "Great! Let's go"),
        (("## Title\nText `code` here",), "Title Text code here"),
        (("It costs 42 dollars, in 2024.",), "It costs 42 dollars, in 2024."),
        (("well-known -", " fine"), "well-known - fine"),
        (("<strong", ">Paris</str", "ong> is <em>nice</em>."), "Paris is nice."),
    ],
)
def test_markdown_goes_text_stays(deltas: tuple[str, ...], spoken: str) -> None:
    assert shape(*deltas) == spoken
