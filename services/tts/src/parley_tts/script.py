"""Dialogue scripts: "[S1] Hi there. [S2] Hello!" or a list of turns, checked against the limits."""

from __future__ import annotations

import re
from dataclasses import dataclass

from parley_tts.engines.base import SPEAKERS

_TAG = re.compile(r"\[S([1-9][0-9]*)\]")


class ScriptError(ValueError):
    """A script that cannot be spoken as given; the message says why."""


@dataclass(frozen=True)
class Line:
    speaker: int  # 1..4
    text: str


def parse_script(script: str) -> list[Line]:
    """Turns of a tagged script. Text before the first tag, or an unknown tag, is an error."""
    parts = _TAG.split(script)
    if parts[0].strip():
        raise ScriptError(f"the script must start with a speaker tag [S1]..[S{SPEAKERS}]: {parts[0].strip()[:40]!r}")
    return [Line(int(speaker), text.strip()) for speaker, text in zip(parts[1::2], parts[2::2], strict=True)]


def check_lines(lines: list[Line], max_turns: int, max_chars: int, max_turn_chars: int) -> None:
    """A ScriptError naming the limit a script passes, if it passes one. Empty turns are allowed (and silent)."""
    if not lines:
        raise ScriptError("the script has no turns")
    if len(lines) > max_turns:
        raise ScriptError(f"the script has {len(lines)} turns; the limit is {max_turns} (PARLEY_TTS_MAX_SCRIPT_TURNS)")
    total = sum(len(line.text) for line in lines)
    if total > max_chars:
        raise ScriptError(f"the script has {total} characters; the limit is {max_chars} (PARLEY_TTS_MAX_SCRIPT_CHARS)")
    for index, line in enumerate(lines):
        if not 1 <= line.speaker <= SPEAKERS:
            raise ScriptError(f"turn {index}: speaker {line.speaker} is not one of [S1]..[S{SPEAKERS}]")
        if len(line.text) > max_turn_chars:
            raise ScriptError(
                f"turn {index} has {len(line.text)} characters; "
                f"the limit is {max_turn_chars} (PARLEY_TTS_MAX_TEXT_CHARS)"
            )
    if not any(line.text for line in lines):
        raise ScriptError("every turn of the script is empty")
