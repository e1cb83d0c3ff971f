from __future__ import annotations

from parley_gateway.conversation.audio_ring import AudioRing
from parley_gateway.conversation.heard import SpokenAudio, SpokenPiece
from parley_gateway.conversation.reply_output import ReplyOutput


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
