"""Stored voices on a real nats-server (JetStream), through the servicer over real gRPC.

The engines are real: Piper, and FireRedTTS2 on the tiny random-weight model (tiny_fireredtts2.py)
on CPU, which clones from stored prompt codes like the real one (its speech is noise, its score low).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np
import pytest
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError

from parley.models import ModelPool
from parley.pcm import Float32Array, float_to_pcm16, pcm16_to_float
from parley.registry import connect
from parley.server import ServiceRuntime
from parley.testing import serving
from parley.tts.v1 import tts_pb2, tts_pb2_grpc
from parley_tts.config import TtsSettings
from parley_tts.engines.base import Context, SpeechSynthesizer, Utterance, VoiceInfo
from parley_tts.engines.fireredtts2 import FireRedTTS2Model, FireRedTTS2Synthesizer
from parley_tts.engines.piper import PiperSynthesizer
from parley_tts.servicer import TextToSpeechServicer
from parley_tts.similarity import SpeakerEmbedder, similarity
from parley_tts.speech_calls import SIMILARITY_METADATA
from parley_tts.voices import VoiceProfile, VoiceStore
from services.tts.tests.tiny_fireredtts2 import write_models_dir
from tests.speech import speak, wav_bytes
from tests.stack import free_port, start_nats

T = TypeVar("T")
REFERENCE_TEXT = "The quick brown fox jumps over the lazy dog, then runs into the forest."
_bucket_numbers = itertools.count()


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    port, store = free_port(), tmp_path_factory.mktemp("jetstream")
    process = start_nats(port, store)
    yield port, store
    process.terminate()
    process.wait()


@pytest.fixture
async def nc(nats_server: tuple[int, Path]) -> AsyncIterator[NatsClient]:
    client = await connect(f"nats://127.0.0.1:{nats_server[0]}", "test-tts")
    yield client
    await client.close()


@pytest.fixture
def bucket() -> str:
    return f"voices_{next(_bucket_numbers)}"


@pytest.fixture(scope="module")
def piper() -> PiperSynthesizer:
    return PiperSynthesizer(None, 1)


@pytest.fixture(scope="module")
def firered(tmp_path_factory: pytest.TempPathFactory) -> FireRedTTS2Synthesizer:
    models = write_models_dir(tmp_path_factory.mktemp("fireredtts2"), frame_limit=400)
    return FireRedTTS2Synthesizer(FireRedTTS2Model.load(models, "cpu"), max_frames=20)


@pytest.fixture(scope="module")
def embedder() -> SpeakerEmbedder:
    return SpeakerEmbedder()


class Counted:
    """A synthesiser whose reference encodings are counted, and whose contexts are kept to be looked at."""

    def __init__(self, inner: SpeechSynthesizer) -> None:
        self.inner = inner
        self.engine, self.cloning, self.sample_rate = inner.engine, inner.cloning, inner.sample_rate
        self.numbers_written_out, self.speaks_phrases = inner.numbers_written_out, inner.speaks_phrases
        self.encoded = 0
        self.contexts: list[Context] = []
        self.before: list[list[tuple[str, bool]]] = []

    def voices(self) -> list[VoiceInfo]:
        return self.inner.voices()

    def new_context(self) -> Context:
        self.contexts.append(self.inner.new_context())
        return self.contexts[-1]

    def synthesize(self, utterance: Utterance, context: Context) -> Iterator[Float32Array]:
        # What the context held when this utterance began (FireRedTTS2's: its segments so far).
        self.before.append([(s.speaker, s.voice_prompt) for s in getattr(context, "segments", [])])
        return self.inner.synthesize(utterance, context)

    def encode_reference(self, audio_16k: Float32Array, transcript: str) -> bytes:
        self.encoded += 1
        return self.inner.encode_reference(audio_16k, transcript)


async def servicer_for(
    nc: NatsClient, bucket: str, embedder: SpeakerEmbedder, *synthesizers: object
) -> TextToSpeechServicer:
    servicer = TextToSpeechServicer(TtsSettings(chunk_ms=100), ServiceRuntime("tts", len(synthesizers), 8))
    for synthesizer in synthesizers:
        servicer.engines.add(synthesizer)  # type: ignore[arg-type]
    servicer.voices.store = await VoiceStore.open(nc, bucket)
    pool: ModelPool[SpeakerEmbedder] = ModelPool("tts-embedder")
    pool.add(embedder)
    servicer.voices.embedder = pool
    return servicer


def wav(samples: Float32Array, rate: int = 16000) -> bytes:
    return wav_bytes(float_to_pcm16(samples), rate)


def reference(seconds: float | None = None) -> bytes:
    audio = pcm16_to_float(speak(REFERENCE_TEXT))
    if seconds is not None:
        audio = np.resize(audio, int(seconds * 16000))
    return wav(audio)


def create(audio: bytes, name: str = "Ana", transcript: str = REFERENCE_TEXT) -> tts_pb2.CreateVoiceRequest:
    return tts_pb2.CreateVoiceRequest(name=name, language="en", transcript=transcript, audio=audio)


async def synthesized(stub: tts_pb2_grpc.TextToSpeechStub, **fields: object) -> tuple[bytes, dict[str, str]]:
    call = stub.Synthesize(tts_pb2.SynthesizeRequest(**fields))  # type: ignore[arg-type]
    pcm = b"".join([chunk.pcm async for chunk in call])
    return pcm, {k: str(v) for k, v in (await call.trailing_metadata() or ())}


async def until_answered(call: Callable[[], Awaitable[T]], within_s: float = 20) -> T:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        try:
            return await asyncio.wait_for(call(), 1)
        except (TimeoutError, NatsError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def listed(store: VoiceStore) -> list[VoiceProfile]:
    """The store's voices once there are any (raises TimeoutError while there are none, to be retried)."""
    found = await store.all()
    if not found:
        raise TimeoutError("no voices yet")
    return found


# ---- the store itself ------------------------------------------------------------------------------


async def test_two_instances_share_voices_and_they_survive_a_nats_restart(tmp_path: Path) -> None:
    port = free_port()
    server = start_nats(port, tmp_path)
    first = await connect(f"nats://127.0.0.1:{port}", "tts-1")
    second = await connect(f"nats://127.0.0.1:{port}", "tts-2")
    try:
        a, b = await VoiceStore.open(first, "shared"), await VoiceStore.open(second, "shared")
        profile = VoiceProfile(
            id="ana-000001", name="Ana", language="en", transcript="Hi.", duration_s=4.0, source_sample_rate=48000
        )
        await a.create(profile, b"RIFF...", {"fireredtts2": b"codes"})
        [seen] = await b.all()
        assert (seen.id, seen.codes) == ("ana-000001", ["fireredtts2"])
        assert await b.codes(seen, "fireredtts2") == b"codes" and await b.reference(seen.id) == b"RIFF..."

        server.terminate()
        server.wait()
        server = start_nats(port, tmp_path)  # the same JetStream directory
        # The clients notice the restart and reconnect; JetStream may answer before it restored the bucket.
        [after] = await until_answered(lambda: listed(b))
        assert after == seen
        await b.add_codes(after.id, "other", b"more")
        assert (await a.get(after.id)).codes == ["fireredtts2", "other"]  # type: ignore[union-attr]

        assert await a.delete(after.id) and await b.get(after.id) is None and await b.all() == []
        assert not await a.delete(after.id)
    finally:
        await first.close()
        await second.close()
        server.terminate()
        server.wait()


async def test_every_listing_right_after_a_save_shows_every_voice(tmp_path: Path) -> None:
    """A listing read while the server still sends it must not come back short (or empty)."""
    port = free_port()
    server = start_nats(port, tmp_path)
    writer, reader = (
        await connect(f"nats://127.0.0.1:{port}", "tts-1"),
        await connect(f"nats://127.0.0.1:{port}", "tts-2"),
    )
    try:
        a, b = await VoiceStore.open(writer, "listed"), await VoiceStore.open(reader, "listed")
        short = []
        for n in range(1, 31):
            profile = VoiceProfile(
                id=f"voice-{n:06d}",
                name=f"V{n}",
                language="en",
                transcript="Hi.",
                duration_s=4.0,
                source_sample_rate=16000,
            )
            await a.create(profile, b"RIFF...", {})
            listings = await asyncio.gather(*(b.all() for _ in range(20)))  # a busy server answers out of step
            short += [(n, len(found)) for found in listings if len(found) != n]
        deleted = "voice-000007"
        assert await a.delete(deleted)
        assert deleted not in [p.id for p in await b.all()] and len(await b.all()) == 29
        assert short == []
    finally:
        await writer.close()
        await reader.close()
        server.terminate()
        server.wait()


# ---- uploads ---------------------------------------------------------------------------------------


async def test_bad_uploads_are_refused_clearly_and_nothing_is_stored(
    nc: NatsClient, bucket: str, piper: PiperSynthesizer, embedder: SpeakerEmbedder
) -> None:
    servicer = await servicer_for(nc, bucket, embedder, piper)
    rng = np.random.default_rng(0)
    noise = wav(rng.uniform(-0.5, 0.5, 5_300_000).astype(np.float32))  # 10.6 MB
    bad = {
        "text file renamed .wav": (b"This is not audio at all, just some words.\n" * 20, "could not be read as audio"),
        "0.5 s clip": (reference(0.5), "0.5 s long; at least 3 s"),
        "60 s clip": (reference(60), "longer than 30 s"),
        "silence": (wav(np.zeros(5 * 16000, np.float32)), "silent or too quiet"),
        "10 MB of noise": (noise, "10.6 MB; at most 10.0 MB"),
        "8 kHz": (wav(pcm16_to_float(speak(REFERENCE_TEXT, sample_rate=8000)), 8000), "at least 16000 Hz"),
        "clipped": (wav(np.clip(pcm16_to_float(speak(REFERENCE_TEXT)) * 20, -1, 1)), "clipped"),
    }
    assert len(noise) > 10_000_000
    async with serving(lambda s: tts_pb2_grpc.add_TextToSpeechServicer_to_server(servicer, s)) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        for what, (audio, message) in bad.items():
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.CreateVoice(create(audio))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
            assert message in (refused.value.details() or ""), (what, refused.value.details())
        for request in (create(reference(), name=""), create(reference(), transcript=" "), create(b"")):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.CreateVoice(request)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        listed = await stub.ListVoices(tts_pb2.ListVoicesRequest())
        assert [v.id for v in listed.voices if v.cloned] == []
    assert await servicer.voices.store.all() == []  # type: ignore[union-attr]
    blobs = await nc.jetstream().object_store(f"{bucket}_blobs")
    assert (await blobs.status()).size == 0


# ---- cloning ----------------------------------------------------------------------------------------


async def test_a_voice_made_on_piper_is_stored_but_piper_refuses_to_clone(
    nc: NatsClient, bucket: str, piper: PiperSynthesizer, embedder: SpeakerEmbedder
) -> None:
    servicer = await servicer_for(nc, bucket, embedder, piper)
    async with serving(lambda s: tts_pb2_grpc.add_TextToSpeechServicer_to_server(servicer, s)) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        voice = await stub.CreateVoice(create(reference()))
        assert voice.cloned and voice.id.startswith("ana-") and list(voice.engines) == []
        assert 4 < voice.reference_duration_s < 6 and voice.transcript == REFERENCE_TEXT
        assert (await stub.GetVoice(tts_pb2.GetVoiceRequest(id=voice.id))).name == "Ana"
        listed = await stub.ListVoices(tts_pb2.ListVoicesRequest())
        assert {v.id for v in listed.voices} == {"joe", voice.id}
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await synthesized(stub, text="Hello.", voice=voice.id)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "fireredtts2" in (refused.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.DeleteVoice(tts_pb2.DeleteVoiceRequest(id="joe"))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        await stub.DeleteVoice(tts_pb2.DeleteVoiceRequest(id=voice.id))
        for call in (
            stub.GetVoice(tts_pb2.GetVoiceRequest(id=voice.id)),
            stub.DeleteVoice(tts_pb2.DeleteVoiceRequest(id=voice.id)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND


async def test_cloning_uses_the_stored_prompt_codes_on_every_instance(
    nc: NatsClient, bucket: str, piper: PiperSynthesizer, firered: FireRedTTS2Synthesizer, embedder: SpeakerEmbedder
) -> None:
    # The voice is made where only Piper runs; the FireRedTTS2 instances compute its codes once, for all.
    made_on_piper = await servicer_for(nc, bucket, embedder, piper)
    cloners = [Counted(firered), Counted(firered)]
    instances = [await servicer_for(nc, bucket, embedder, piper, cloner) for cloner in cloners]
    async with serving(lambda s: tts_pb2_grpc.add_TextToSpeechServicer_to_server(made_on_piper, s)) as channel:
        voice = await tts_pb2_grpc.TextToSpeechStub(channel).CreateVoice(create(reference()))
    for servicer in instances:
        async with serving(lambda s, sv=servicer: tts_pb2_grpc.add_TextToSpeechServicer_to_server(sv, s)) as channel:
            stub = tts_pb2_grpc.TextToSpeechStub(channel)
            listed = {v.id: v for v in (await stub.ListVoices(tts_pb2.ListVoicesRequest())).voices}
            assert list(listed[voice.id].engines) == ["fireredtts2"]
            for _ in range(2):
                pcm, trailer = await synthesized(stub, text="Hello there.", voice=voice.id)
                assert len(pcm) > 2 * 24000 // 12.5  # frames of 24 kHz audio
                assert -1 <= float(trailer[SIMILARITY_METADATA]) <= 1
    assert [c.encoded for c in cloners] == [1, 0]  # the first instance encoded it; the second read its codes
    profile = await instances[1].voices.store.get(voice.id)  # type: ignore[union-attr]
    assert profile is not None and profile.codes == ["fireredtts2"] and len(profile.embedding) == 256


async def test_a_conversation_keeps_its_voice_prompt_and_earlier_replies(
    nc: NatsClient, bucket: str, firered: FireRedTTS2Synthesizer, embedder: SpeakerEmbedder
) -> None:
    servicer = await servicer_for(nc, bucket, embedder, firered)
    async with serving(lambda s: tts_pb2_grpc.add_TextToSpeechServicer_to_server(servicer, s)) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        voice = await stub.CreateVoice(create(reference()))

        async def reply(text: str) -> tts_pb2.SpeakDone:
            requests = [
                tts_pb2.SpeakRequest(start=tts_pb2.SpeakStart(voice=voice.id, conversation_id="c1")),
                tts_pb2.SpeakRequest(text=text),
                tts_pb2.SpeakRequest(end_of_text=True),
            ]
            responses = [r async for r in stub.Speak(iter(requests))]
            assert any(r.HasField("audio") for r in responses)
            return responses[-1].done

        first = await reply("Hello there.")
        assert first.HasField("speaker_similarity") and first.audio_s > 1
        await reply("How are you?")
    [(_, memory, _)] = servicer.conversations._known.values()
    segments = memory.segments  # type: ignore[attr-defined]
    assert [(s.speaker, s.text, s.voice_prompt) for s in segments] == [
        ("[S1]", REFERENCE_TEXT, True),
        ("[S1]", "Hello there.", False),
        ("[S1]", "How are you?", False),
    ]


async def test_a_dialogue_puts_every_speakers_voice_before_its_first_line(
    nc: NatsClient, bucket: str, firered: FireRedTTS2Synthesizer, embedder: SpeakerEmbedder
) -> None:
    """As FireRedTTS2's authors prompt a dialogue: all the voices first, then the turns."""
    engine = Counted(firered)
    servicer = await servicer_for(nc, bucket, embedder, engine)
    async with serving(lambda s: tts_pb2_grpc.add_TextToSpeechServicer_to_server(servicer, s)) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        ana = await stub.CreateVoice(create(reference(), name="Ana"))
        ben = await stub.CreateVoice(create(reference(), name="Ben"))
        request = tts_pb2.DialogueRequest(script="[S1] Hello there. [S2] How are you?", voices={1: ana.id, 2: ben.id})
        turns = [r.turn_done for r in [r async for r in stub.SynthesizeDialogue(request)] if r.HasField("turn_done")]
    assert [t.audio_s > 0 for t in turns] == [True, True]
    assert engine.before == [
        [("[S1]", True), ("[S2]", True)],  # the first line is spoken with both voices already in
        [("[S1]", True), ("[S2]", True), ("[S1]", False)],
    ]


# ---- Piper dialogue ---------------------------------------------------------------------------------


async def test_piper_dialogue_speakers_sound_like_different_people(
    nc: NatsClient, bucket: str, piper: PiperSynthesizer, embedder: SpeakerEmbedder
) -> None:
    servicer = await servicer_for(nc, bucket, embedder, piper)
    lines = [
        "The quick brown fox jumps over the lazy dog, then runs into the forest.",
        "Please remember to water the plants on the balcony every morning this week.",
    ]
    script = " ".join(f"[S{speaker}] {line}" for line in lines for speaker in (1, 2, 3, 4))
    async with serving(lambda s: tts_pb2_grpc.add_TextToSpeechServicer_to_server(servicer, s)) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        turns: dict[int, list[bytes]] = {}
        async for response in stub.SynthesizeDialogue(tts_pb2.DialogueRequest(script=script)):
            if response.HasField("audio"):
                turns.setdefault(response.turn, []).append(response.audio.pcm)
    assert sorted(turns) == list(range(8))
    embeddings = [embedder.embed(pcm16_to_float(b"".join(turns[t])), 22050) for t in range(8)]
    same = [similarity(embeddings[s], embeddings[s + 4]) for s in range(4)]  # one speaker, two lines
    different = [similarity(embeddings[a], embeddings[b]) for a in range(4) for b in range(4) if a < b]
    assert min(same) > max(different) + 0.05, (same, different)
