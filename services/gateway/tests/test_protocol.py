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


def test_output_sample_rate_is_optional_and_bounded() -> None:
    start = parse_client_event('{"type": "session.start", "output_sample_rate": 16000}')
    assert isinstance(start, SessionStart) and start.output_sample_rate == 16000
    default = parse_client_event('{"type": "session.start"}')
    assert isinstance(default, SessionStart) and default.output_sample_rate is None
    for rate in (7999, 48001):
        with pytest.raises(ProtocolError) as error:
            parse_client_event(f'{{"type": "session.start", "output_sample_rate": {rate}}}')
        assert error.value.code is ErrorCode.INVALID_EVENT


def test_a_resume_keeps_the_stored_output_sample_rate_unless_it_sets_one() -> None:
    stored = SessionStart.model_validate({"type": "session.start", "output_sample_rate": 16000}).conversation_options()
    resumed = SessionStart.model_validate({"type": "session.start", "session_id": "sess_" + "0" * 16})
    assert resumed.over(stored).output_sample_rate == 16000
    changed = SessionStart.model_validate({"type": "session.start", "output_sample_rate": 8000})
    assert changed.over(stored).output_sample_rate == 8000
