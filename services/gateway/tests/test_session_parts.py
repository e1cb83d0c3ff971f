from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from parley.audio.v1.audio_pb2 import AudioChunk
from parley.tts.v1 import tts_pb2
from parley_gateway.conversation.audio_ring import AudioRing
from parley_gateway.conversation.heard import SpokenAudio, SpokenPiece
from parley_gateway.conversation.reply_output import ReplyOutput
from parley_gateway.conversation.speech import ReplySpeech
from parley_gateway.routing.model_services import TextRequests
from parley_gateway.routing.retry import RetryPolicy


def test_ring_keeps_recent_audio_by_position() -> None:
    ring = AudioRing(sample_rate=10, seconds=1.0)  # holds ~10 samples
    for i in range(5):
        ring.append(bytes([i, 0]) * 4)  # 4 samples each, at positions 0, 4, 8, 12, 16
    assert ring.end == 20
    assert ring.read(18, 20) == bytes([4, 0]) * 2
    assert ring.read(10, 14) == bytes([2, 0]) * 2 + bytes([3, 0]) * 2  # across two chunks
    # Older audio than held is clamped to what is left (the last 3 chunks), never invented.
    assert ring.read(0, 20) == bytes([2, 0]) * 4 + bytes([3, 0]) * 4 + bytes([4, 0]) * 4
    assert ring.read(0, 8) == b""


def test_heard_text_cuts_at_the_played_position() -> None:
    reply = SpokenAudio([SpokenPiece("One two three four.", 0, 1000), SpokenPiece("Five six.", 1000, 1500)], 1500)
    assert reply.heard_text(2000) == "One two three four. Five six."
    assert reply.heard_text(1000) == "One two three four."
    assert reply.heard_text(500) == "One two"
    assert reply.heard_text(0) == ""
    # Played to within rounding of the end: all of it was heard.
    assert reply.fully_played(1460) and reply.heard_text(1460) == "One two three four. Five six."
    assert reply.heard_text(1300) == "One two three four. Five"


async def test_pieces_the_tts_spoke_with_the_next_are_heard_when_that_one_plays() -> None:
    class JoiningTts:
        policy = RetryPolicy()

        async def speak(
            self, start: tts_pb2.SpeakStart, pieces: TextRequests, owed_since: Callable[[], float | None]
        ) -> AsyncIterator[tts_pb2.SpeakResponse]:
            index = 0
            async for text in pieces():
                if not text.endswith(","):  # "The capital" waits for the next piece, as FireRedTTS2's does
                    index += 1
                    continue
                chunk = AudioChunk(pcm=bytes(start.sample_rate * 2), sample_rate=start.sample_rate)  # 1 s
                yield tts_pb2.SpeakResponse(audio=chunk, piece=index)
                index += 1

    spoken = SpokenAudio()
    speech = ReplySpeech(JoiningTts(), tts_pb2.SpeakStart(sample_rate=16000), spoken, lambda _: None, "test")  # type: ignore[arg-type]
    for piece in ("The capital", "of France is Paris,", "a lovely city,"):
        speech.say(piece)
    speech.end()
    await speech.run()
    assert [(p.start_ms, p.end_ms) for p in spoken.pieces] == [(0, 0), (0, 1000), (1000, 2000)]
    assert spoken.heard_text(0) == ""
    assert spoken.heard_text(500) == "The capital of France"
    assert spoken.heard_text(1500) == "The capital of France is Paris, a lovely"


def test_held_output_is_released_in_order_or_dropped() -> None:
    sent: list[object] = []
    changes: list[str] = []
    held = ReplyOutput(sent.append, held=True)
    held.send({"type": "a"})
    held.defer(lambda: changes.append("history"))
    held.send(b"audio")
    assert sent == [] and changes == []
    held.release()
    assert sent == [{"type": "a"}, b"audio"] and changes == ["history"]
    held.send({"type": "b"})  # live now
    assert sent[-1] == {"type": "b"}

    dropped = ReplyOutput(sent.append, held=True)
    dropped.send({"type": "guess"})
    dropped.defer(lambda: changes.append("never"))
    dropped.discard()
    dropped.send({"type": "late"})
    assert {"type": "guess"} not in sent and "never" not in changes
