"""The real Piper voice through the servicer over real gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from parley.pcm import Float32Array
from parley.server import ServiceRuntime
from parley.testing import OverlapProbe, serving
from parley.tts.v1 import tts_pb2, tts_pb2_grpc
from parley_tts.config import TtsSettings
from parley_tts.engines.base import (
    CannotClone,
    Context,
    StoredVoice,
    UnknownVoice,
    UnspeakableText,
    Utterance,
    VoiceInfo,
)
from parley_tts.engines.piper import PiperSynthesizer
from parley_tts.servicer import TextToSpeechServicer


class Probed:
    """The real synthesiser, with every request counted by an OverlapProbe."""

    engine = "piper"
    cloning = False
    numbers_written_out: frozenset[str] = frozenset()
    speaks_phrases = True

    def __init__(self, inner: PiperSynthesizer) -> None:
        self.inner = inner
        self.probe = OverlapProbe()
        self.sample_rate = inner.sample_rate

    def voices(self) -> list[VoiceInfo]:
        return self.inner.voices()

    def new_context(self) -> Context:
        return self.inner.new_context()

    def synthesize(self, utterance: Utterance, context: Context) -> Iterator[Float32Array]:
        return self.probe.through(self.inner.synthesize(utterance, context))


@pytest.fixture(scope="module")
def synthesizer() -> PiperSynthesizer:
    return PiperSynthesizer(None, 1)


def servicer_for(*synthesizers: object, settings: TtsSettings | None = None) -> TextToSpeechServicer:
    settings = settings or TtsSettings(max_text_chars=50, chunk_ms=100)
    servicer = TextToSpeechServicer(settings, ServiceRuntime("tts", len(synthesizers), queue_limit=8))
    for synthesizer in synthesizers:
        servicer.engines.add(synthesizer)  # type: ignore[arg-type]
    return servicer


async def synthesized(stub: tts_pb2_grpc.TextToSpeechStub, text: str, **fields: object) -> bytes:
    request = tts_pb2.SynthesizeRequest(text=text, **fields)  # type: ignore[arg-type]
    return b"".join([chunk.pcm async for chunk in stub.Synthesize(request)])


def speak(synthesizer: PiperSynthesizer, utterance: Utterance) -> list[Float32Array]:
    return list(synthesizer.synthesize(utterance, synthesizer.new_context()))


def test_engine_speaks_a_sentence_at_a_time(synthesizer: PiperSynthesizer) -> None:
    [voice] = synthesizer.voices()
    assert (voice.id, voice.sample_rate, voice.language) == ("joe", 22050, "en")  # ISO 639-1, not the locale
    pieces = speak(synthesizer, Utterance("First sentence here. And a second one.", "joe"))
    assert len(pieces) == 2
    audio = np.concatenate(pieces)
    assert audio.dtype == np.float32 and np.sqrt(np.mean(audio**2)) > 0.02
    fast = np.concatenate(speak(synthesizer, Utterance("First sentence here. And a second one.", "joe", speed=1.5)))
    assert fast.size < audio.size * 0.8
    with pytest.raises(UnknownVoice):
        speak(synthesizer, Utterance("hi", "nobody"))
    with pytest.raises(CannotClone, match="fireredtts2"):
        speak(synthesizer, Utterance("hi", StoredVoice("v_1", "hello", b"")))


def closing_silence_ms(audio: Float32Array, rate: int) -> float:
    return float((audio.size - 1 - np.flatnonzero(np.abs(audio) > 0.02)[-1]) / rate * 1000)


def test_a_text_that_breaks_off_mid_phrase_ends_without_a_sentences_silence(synthesizer: PiperSynthesizer) -> None:
    rate = synthesizer.sample_rate
    cut = np.concatenate(speak(synthesizer, Utterance("The capital of France", "joe")))
    assert closing_silence_ms(cut, rate) <= 45  # the next piece follows as across a phrase break
    for closed in ("The capital of France.", "The capital of France,", "Is it Paris?"):
        audio = np.concatenate(speak(synthesizer, Utterance(closed, "joe")))
        assert closing_silence_ms(audio, rate) > 100, closed  # a sentence or clause keeps its pause


def test_text_the_voice_would_spell_out_is_refused_before_any_audio(synthesizer: PiperSynthesizer) -> None:
    # Scripts an English voice can only read by name, a long phrase per character.
    for text in ("你好，世界。今天天气很好。", "שלום עולם, מה שלומך היום", "𝕳𝖊𝖑𝖑𝖔 𝖋𝖗𝖎𝖊𝖓𝖉"):
        with pytest.raises(UnspeakableText, match="cannot read"):
            speak(synthesizer, Utterance(text, "joe"))
    # Ordinary text with digits, numbers, prices and letter names is fine.
    for text in ("It costs $3.50, or 4 euros.", "Call 555 123 4567 before 10:30.", "In 1969, 600,000,000 watched."):
        assert speak(synthesizer, Utterance(text, "joe")), text


async def test_synthesize_limits_and_errors(synthesizer: PiperSynthesizer) -> None:
    servicer = servicer_for(synthesizer)
    async with serving(lambda s: tts_pb2_grpc.add_TextToSpeechServicer_to_server(servicer, s)) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        chunks = [c async for c in stub.Synthesize(tts_pb2.SynthesizeRequest(text="Hello world.", sample_rate=48000))]
        assert all(c.sample_rate == 48000 for c in chunks)
        assert max(len(c.pcm) for c in chunks) <= 48000 * 2 // 10
        starts = [c.start_s for c in chunks]
        assert starts == sorted(starts) and starts[0] == 0.0
        # Text with nothing to pronounce ends the stream cleanly, with no audio.
        assert [c async for c in stub.Synthesize(tts_pb2.SynthesizeRequest(text="..."))] == []

        cases = [
            (tts_pb2.SynthesizeRequest(text="x" * 51), grpc.StatusCode.INVALID_ARGUMENT),
            (tts_pb2.SynthesizeRequest(text="\u200b\u0007 "), grpc.StatusCode.INVALID_ARGUMENT),
            (tts_pb2.SynthesizeRequest(text="hi", voice="nobody"), grpc.StatusCode.NOT_FOUND),
            (tts_pb2.SynthesizeRequest(text="hi", sample_rate=100), grpc.StatusCode.INVALID_ARGUMENT),
            (tts_pb2.SynthesizeRequest(text="hi", speed=9), grpc.StatusCode.INVALID_ARGUMENT),
            (tts_pb2.SynthesizeRequest(text="你好，世界。今天天气很好。"), grpc.StatusCode.INVALID_ARGUMENT),
        ]
        for request, code in cases:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in stub.Synthesize(request):
                    pass
            assert refused.value.code() == code, request
    assert servicer.runtime.slots.active == 0


async def test_mathematical_letters_are_read_as_letters(synthesizer: PiperSynthesizer) -> None:
    """ "𝕳𝖊𝖑𝖑𝖔" once came out as ~11 s of spelled-out symbol names; NFKC makes it "Hello"."""
    servicer = servicer_for(synthesizer)
    async with serving(lambda s: tts_pb2_grpc.add_TextToSpeechServicer_to_server(servicer, s)) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        fancy = await synthesized(stub, "𝕳𝖊𝖑𝖑𝖔 𝖋𝖗𝖎𝖊𝖓𝖉", sample_rate=16000)
        plain = await synthesized(stub, "Hello friend", sample_rate=16000)
    # Piper's durations vary a little from call to call; spelled out it was over ten times longer.
    assert 0.7 * len(plain) < len(fancy) < 1.4 * len(plain), (len(fancy) / 32000, len(plain) / 32000)


async def test_rapid_cancel_then_request_never_shares_a_voice(synthesizer: PiperSynthesizer) -> None:
    probed = Probed(synthesizer)
    servicer = servicer_for(probed, settings=TtsSettings(chunk_ms=50))
    long_text = "This is a long sentence that keeps going for a while. " * 4
    async with serving(lambda s: tts_pb2_grpc.add_TextToSpeechServicer_to_server(servicer, s)) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        for cycle in range(200):
            call = stub.Synthesize(tts_pb2.SynthesizeRequest(text=long_text))
            if cycle % 4 == 0:
                async for _ in call:
                    break  # cut after the first audio
            else:
                await asyncio.sleep(0)
            call.cancel()
        after = await synthesized(stub, "Still here.")
    assert probed.probe.overlaps == 0 and probed.probe.entries >= 50
    assert len(after) > 22050, "the voice answers properly after 200 interruptions"
    assert servicer.engines.by_name["piper"].pool.free == 1 and servicer.runtime.slots.active == 0


async def speak_requests(*items: tts_pb2.SpeakRequest, gap_s: float = 0.0) -> AsyncIterator[tts_pb2.SpeakRequest]:
    for item in items:
        yield item
        await asyncio.sleep(gap_s)


async def test_a_reply_is_spoken_piece_by_piece_as_its_text_arrives(synthesizer: PiperSynthesizer) -> None:
    servicer = servicer_for(synthesizer)
    async with serving(lambda s: tts_pb2_grpc.add_TextToSpeechServicer_to_server(servicer, s)) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        requests = speak_requests(
            tts_pb2.SpeakRequest(start=tts_pb2.SpeakStart(sample_rate=16000, conversation_id="c1")),
            tts_pb2.SpeakRequest(text="Hello there,"),
            tts_pb2.SpeakRequest(text="how are you today?"),
            tts_pb2.SpeakRequest(end_of_text=True),
            gap_s=0.05,
        )
        responses = [r async for r in stub.Speak(requests)]
    audio = [r for r in responses if r.HasField("audio")]
    assert [r.piece for r in audio] == sorted(r.piece for r in audio) and {r.piece for r in audio} == {0, 1}
    starts = [r.audio.start_s for r in audio]
    assert starts == sorted(starts) and all(r.audio.sample_rate == 16000 for r in audio)
    done = responses[-1]
    assert done.HasField("done") and done.done.audio_s == pytest.approx(sum(len(r.audio.pcm) for r in audio) / 32000)
    assert not done.done.HasField("speaker_similarity")  # a built-in voice: nothing to compare with


class SpeaksSentences(Probed):
    """Piper standing in for an engine that speaks whole sentences or clauses (as FireRedTTS2 does)."""

    speaks_phrases = False

    def __init__(self, inner: PiperSynthesizer) -> None:
        super().__init__(inner)
        self.texts: list[str] = []

    def synthesize(self, utterance: Utterance, context: Context) -> Iterator[Float32Array]:
        self.texts.append(utterance.text)
        return super().synthesize(utterance, context)


async def test_an_engine_that_speaks_sentences_gets_a_piece_cut_mid_phrase_with_the_next(
    synthesizer: PiperSynthesizer,
) -> None:
    engine = SpeaksSentences(synthesizer)
    servicer = servicer_for(engine)
    async with serving(lambda s: tts_pb2_grpc.add_TextToSpeechServicer_to_server(servicer, s)) as channel:
        requests = speak_requests(
            tts_pb2.SpeakRequest(start=tts_pb2.SpeakStart(sample_rate=16000)),
            *(tts_pb2.SpeakRequest(text=t) for t in ("The capital", "of France is Paris,", "a lovely city.", "Bye")),
            tts_pb2.SpeakRequest(end_of_text=True),
            gap_s=0.05,
        )
        responses = [r async for r in tts_pb2_grpc.TextToSpeechStub(channel).Speak(requests)]
    assert engine.texts == ["The capital of France is Paris,", "a lovely city.", "Bye"]
    # The joined audio is named by the last of its pieces: the client knows both were spoken.
    assert sorted({r.piece for r in responses if r.HasField("audio")}) == [1, 2, 3]


async def test_a_reply_stream_without_its_start_or_end_is_refused_or_dropped(synthesizer: PiperSynthesizer) -> None:
    servicer = servicer_for(synthesizer)
    async with serving(lambda s: tts_pb2_grpc.add_TextToSpeechServicer_to_server(servicer, s)) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as no_start:
            async for _ in stub.Speak(speak_requests(tts_pb2.SpeakRequest(text="Hi."))):
                pass
        assert no_start.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # The client gives up (no end_of_text): no `done`, and nothing left running.
        cut = [
            r
            async for r in stub.Speak(
                speak_requests(tts_pb2.SpeakRequest(start=tts_pb2.SpeakStart()), tts_pb2.SpeakRequest(text="Hi."))
            )
        ]
        assert not any(r.HasField("done") for r in cut)
    assert servicer.runtime.slots.active == 0


async def test_a_dialogue_gives_every_turn_audio_and_progress(synthesizer: PiperSynthesizer) -> None:
    servicer = servicer_for(synthesizer)
    script = "[S1] Good morning, how did you sleep? [S2] Very well, thank you. [S1] Great! [S3] [S4] Me too."
    async with serving(lambda s: tts_pb2_grpc.add_TextToSpeechServicer_to_server(servicer, s)) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        responses = [
            r async for r in stub.SynthesizeDialogue(tts_pb2.DialogueRequest(script=script, sample_rate=16000))
        ]
        assert responses[0].started.turns_total == 5 and list(responses[0].started.speakers) == [1, 2, 1, 3, 4]
        assert responses[0].started.sample_rate == 16000
        progress = [r.turn_done for r in responses if r.HasField("turn_done")]
        assert [(p.turn, p.turns_total) for p in progress] == [(i, 5) for i in range(5)]
        spoken = {r.turn for r in responses if r.HasField("audio")}
        assert spoken == {0, 1, 2, 4}  # [S3] says nothing
        assert progress[3].audio_s == 0 and all(p.audio_s > 0.3 for p in progress if p.turn != 3)

        bad = [
            tts_pb2.DialogueRequest(script="no tags here"),
            tts_pb2.DialogueRequest(script="[S5] Who am I?"),
            tts_pb2.DialogueRequest(script="[S1] " + "word " * 500),
            tts_pb2.DialogueRequest(script="[S1] hi", turns=[tts_pb2.DialogueTurn(speaker=1, text="hi")]),
            tts_pb2.DialogueRequest(script="[S1] hi", voices={1: "nobody"}),
        ]
        for request in bad:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in stub.SynthesizeDialogue(request):
                    pass
            assert refused.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), request
            assert refused.value.details()


async def test_a_language_the_voice_does_not_speak_is_refused_naming_an_engine_that_does(
    synthesizer: PiperSynthesizer,
) -> None:
    servicer = servicer_for(synthesizer)
    async with serving(lambda s: tts_pb2_grpc.add_TextToSpeechServicer_to_server(servicer, s)) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        assert await synthesized(stub, "Hello there.", language="en")  # joe's own language
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await synthesized(stub, "Bonjour à tous.", language="fr")
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "'fr'" in (refused.value.details() or "") and "fireredtts2" in (refused.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await synthesized(stub, "Hello.", language="english")
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # A reply's Speak start is checked the same way, before any text is read.
        start = tts_pb2.SpeakRequest(start=tts_pb2.SpeakStart(voice="joe", language="de"))
        with pytest.raises(grpc.aio.AioRpcError) as speak_refused:
            async for _ in stub.Speak(speak_requests(start, tts_pb2.SpeakRequest(end_of_text=True))):
                pass
        assert speak_refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert servicer.runtime.slots.active == 0


async def test_a_refused_speak_call_reaches_a_client_still_writing_as_the_refusal(
    synthesizer: PiperSynthesizer,
) -> None:
    # A grpc.aio client whose write fails because the server already ended the call reports
    # INTERNAL instead of the server's status; the service reads the rest before refusing.
    servicer = servicer_for(synthesizer)
    start = tts_pb2.SpeakRequest(start=tts_pb2.SpeakStart(voice="joe", language="de"))
    pieces = [tts_pb2.SpeakRequest(text=f"Satz {n}.") for n in range(40)]
    async with serving(lambda s: tts_pb2_grpc.add_TextToSpeechServicer_to_server(servicer, s)) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        codes = []
        for _ in range(10):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in stub.Speak(speak_requests(start, *pieces, tts_pb2.SpeakRequest(end_of_text=True))):
                    pass
            codes.append(refused.value.code())
    assert set(codes) == {grpc.StatusCode.FAILED_PRECONDITION}, codes


async def test_speech_requests_are_counted_by_method_engine_and_language(synthesizer: PiperSynthesizer) -> None:
    keys = [("Synthesize", "en"), ("Synthesize", "default"), ("Speak", "en"), ("Synthesize", "fr"), ("Speak", "de")]
    end = tts_pb2.SpeakRequest(end_of_text=True)

    def counted() -> dict[tuple[str, str], float]:
        sample = "parley_tts_requests_total"
        return {
            (method, language): REGISTRY.get_sample_value(
                sample, {"method": method, "engine": "piper", "language": language}
            )
            or 0.0
            for method, language in keys
        }

    servicer = servicer_for(synthesizer)
    before = counted()
    async with serving(lambda s: tts_pb2_grpc.add_TextToSpeechServicer_to_server(servicer, s)) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        assert await synthesized(stub, "Hello there.", language="en")
        assert await synthesized(stub, "Hello there.")  # no language named: the voice's own
        start = tts_pb2.SpeakRequest(start=tts_pb2.SpeakStart(voice="joe", language="en"))
        assert [r async for r in stub.Speak(speak_requests(start, tts_pb2.SpeakRequest(text="Hi."), end))]
        # Refused requests are not counted: the counter says what was spoken.
        with pytest.raises(grpc.aio.AioRpcError):
            await synthesized(stub, "Bonjour.", language="fr")
        with pytest.raises(grpc.aio.AioRpcError):
            refused = tts_pb2.SpeakRequest(start=tts_pb2.SpeakStart(voice="joe", language="de"))
            async for _ in stub.Speak(speak_requests(refused, end)):
                pass
    after = counted()
    assert {key: after[key] - before[key] for key in keys} == {
        ("Synthesize", "en"): 1,
        ("Synthesize", "default"): 1,
        ("Speak", "en"): 1,
        ("Synthesize", "fr"): 0,
        ("Speak", "de"): 0,
    }
