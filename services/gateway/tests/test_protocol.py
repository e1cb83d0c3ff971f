from __future__ import annotations

import pytest

from parley_gateway.protocol import ErrorCode, ProtocolError, SessionStart, TextInput, parse_client_event


def test_session_start_defaults_and_options() -> None:
    start = parse_client_event('{"type": "session.start", "voice": "joe", "vad": {"min_silence_ms": 400}}')
    assert isinstance(start, SessionStart)
    assert (start.input_sample_rate, start.voice, start.vad.min_silence_ms) == (16000, "joe", 400)
    assert isinstance(parse_client_event('{"type": "text.input", "text": "hi"}'), TextInput)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{oops", ErrorCode.INVALID_JSON),
        ("[1, 2]", ErrorCode.INVALID_EVENT),
        ('{"type": 5}', ErrorCode.INVALID_EVENT),
        ('{"type": "launch.rocket"}', ErrorCode.UNKNOWN_EVENT),
        ('{"type": "text.input", "text": ""}', ErrorCode.INVALID_EVENT),
        ('{"type": "session.start", "input_sample_rate": 96000}', ErrorCode.INVALID_EVENT),
        ('{"type": "session.start", "surprise": 1}', ErrorCode.INVALID_EVENT),
    ],
)
def test_bad_events_name_what_is_wrong(raw: str, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as error:
        parse_client_event(raw)
    assert error.value.code is code
    assert error.value.message
