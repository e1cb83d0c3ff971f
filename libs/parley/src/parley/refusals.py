"""Why a model service refused a call, for the callers that act on the reason.

A gRPC status code is shared by many refusals: FAILED_PRECONDITION from the TTS service is a
voice that does not speak the language asked for, but also a stored voice that cannot load. The
services name the few reasons a caller handles differently in a trailer, so the caller never
guesses the cause from the code.
"""

from __future__ import annotations

from collections.abc import Iterable

REFUSED_FOR_TRAILER = "parley-refused-for"
# The model cannot handle the language asked for (a voice that does not speak it, a recogniser
# that cannot transcribe it): the caller can go on without it (text only, or typed turns).
LANGUAGE = "language"


def refused_for(reason: str) -> tuple[tuple[str, str], ...]:
    """The trailing metadata that names a refusal's reason ("" names none)."""
    return ((REFUSED_FOR_TRAILER, reason),) if reason else ()


def refusal_reason(trailing_metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The reason a refused call's trailers name, or ""."""
    for key, value in trailing_metadata or ():
        if key == REFUSED_FOR_TRAILER:
            return value.decode() if isinstance(value, bytes) else value
    return ""
