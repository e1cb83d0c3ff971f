"""A conversation in another language than English, through the real stack (Piper's English voice only)."""

from __future__ import annotations

import grpc
import pytest

from parley import refusals
from parley.tts.v1 import tts_pb2, tts_pb2_grpc
from tests.conversation_client import ConversationClient
from tests.stack import Stack

pytestmark = pytest.mark.integration


async def test_a_french_session_gets_its_reply_as_text_with_a_notice_naming_french(stack: Stack) -> None:
    async with ConversationClient(stack.ws_url, language="fr") as conv:
        await conv.send_event({"type": "text.input", "text": "Bonjour ! Comment allez-vous ?"})
        done = await conv.wait_for("response.done", timeout_s=60)
        types = conv.received.types()
    assert done["status"] == "completed", done
    deltas = "".join(e["text"] for e in conv.received.of_type("response.text.delta"))
    assert deltas.strip() == done["text"] != ""  # the reply text is all there
    [notice] = [e for e in conv.received.of_type("error") if e["code"] == "voice_unavailable"]
    assert notice["language"] == "fr" and "French" in notice["message"], notice
    # Text only: no audio, and nothing ended the session.
    assert conv.received.audio_bytes() == b"" and "response.audio.started" not in types
    assert "session.ended" not in types


async def test_the_tts_service_checks_the_language_of_a_reply(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports['tts']}") as channel:
        tts = tts_pb2_grpc.TextToSpeechStub(channel)
        voices = {v.id: v.language for v in (await tts.ListVoices(tts_pb2.ListVoicesRequest())).voices}
        assert voices["joe"] == "en"

        async def reply(language: str) -> list[tts_pb2.SpeakResponse]:
            async def requests():  # type: ignore[no-untyped-def]
                yield tts_pb2.SpeakRequest(start=tts_pb2.SpeakStart(voice="joe", sample_rate=16000, language=language))
                yield tts_pb2.SpeakRequest(text="Hello there.")
                yield tts_pb2.SpeakRequest(end_of_text=True)

            return [response async for response in tts.Speak(requests())]

        assert any(r.HasField("audio") for r in await reply("en"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await reply("fr")
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert refusals.refusal_reason(refused.value.trailing_metadata()) == refusals.LANGUAGE
        assert "'fr'" in (refused.value.details() or "") and "fireredtts2" in (refused.value.details() or "")
