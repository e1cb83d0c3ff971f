"""Semantic end of turn over the real stack: the VAD's turn model judges each pause, the gateway decides.

A pause to think in mid-sentence must not end the turn (the silence rule alone would end it after
500 ms); a question that sounds finished is answered without waiting for the silence rule.
"""

from __future__ import annotations

import pytest

from bench.turn_cutoffs import PausedQuestion, paused_questions
from tests.conversation_client import ConversationClient
from tests.speech import silence, speak
from tests.stack import Stack

pytestmark = pytest.mark.integration


def weather_question(pause_s: float) -> PausedQuestion:
    """ "I would like to know the weather in" ... "Paris tomorrow", spoken in one go with a pause."""
    [question] = paused_questions(1, pause_s=pause_s)
    return question


async def test_a_pause_to_think_in_mid_sentence_does_not_end_the_turn(stack: Stack) -> None:
    # 700 ms: longer than the VAD's 500 ms of silence that ends a turn without a verdict.
    question = weather_question(0.7)
    async with ConversationClient(stack.ws_url) as conv:
        await conv.stream_audio(silence(0.5) + question.pcm, realtime=True)
        # More than the silence cap (1.2 s) for a turn judged incomplete: it ends on its own.
        await conv.stream_audio(silence(2.5), realtime=True)
        done = await conv.wait_for("response.done", timeout_s=60)
    finals = [e["text"] for e in conv.received.of_type("transcript.final")]
    # Answered once, after the second half: the one user turn holds both halves.
    assert len(conv.received.of_type("response.created")) == 1, conv.received.types()
    # (Whisper tiny hears "the weather" in this voice as "that we're" or so: the words around it.)
    assert len(finals) == 1 and "like to know" in finals[0].lower() and "paris" in finals[0].lower(), finals
    assert conv.received.of_type("response.cancelled") == []
    assert done["status"] == "completed"
    # The turn model runs in this stack: the turn's last pause came with a verdict.
    assert "end_of_turn" in done["timings"], done["timings"]


async def test_a_question_that_sounds_finished_ends_at_its_pause(stack: Stack) -> None:
    # The silence rule is set far off (2 s), so that however slow the transcript is on this machine,
    # only the turn model's verdict can end the turn early; a question it judges complete (P ~0.97).
    async with ConversationClient(stack.ws_url, vad={"min_silence_ms": 2000}) as conv:
        await conv.stream_audio(silence(0.5) + speak("How many days are there in a week?"), realtime=True)
        await conv.stream_audio(silence(3.0), realtime=True)
        done = await conv.wait_for("response.done", timeout_s=60)
    timings = done["timings"]
    # The gateway's own account: the turn ended on the verdict at the pause (200 ms of silence), not on
    # the silence rule.
    assert timings["turn_end"] == "end_of_turn", timings
    assert timings["vad_silence_ms"] < 500 and timings["end_of_turn"] >= 0.7, timings
    assert timings["end_of_turn_ms"] > 0, timings
    assert len(conv.received.of_type("vad.speech_stopped")) == 1, conv.received.types()  # not again at 2 s
    assert len(conv.received.of_type("response.created")) == 1
