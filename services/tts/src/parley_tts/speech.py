"""The engines an instance runs, which engine speaks which voice, and speech as chunks.

An instance may run several engines (Piper on the CPU, FireRedTTS2 on a GPU),
each with its own pool of model copies. A built-in voice belongs to one engine;
a stored (cloned) voice can be spoken by any engine that clones.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np

from parley.models import ModelPool
from parley.pcm import Float32Array, StreamResampler
from parley_tts.engines.base import Context, SpeechSynthesizer, StoredVoice, Utterance, VoiceInfo


class VoiceError(Exception):
    """A voice that does not exist here, or that the chosen engine cannot speak."""

    def __init__(self, message: str, not_found: bool) -> None:
        super().__init__(message)
        self.not_found = not_found


@dataclass
class EngineRuntime:
    """One engine in this instance: its model copies and what they can do (read once at load)."""

    name: str
    cloning: bool
    sample_rate: int
    numbers_written_out: frozenset[str]
    voices: dict[str, VoiceInfo]
    new_context: Callable[[], Context] = field(repr=False)  # makes memory only; never touches a model
    pool: ModelPool[SpeechSynthesizer] = field(repr=False)
    speaks_phrases: bool = True

    def rate_of(self, voice: str | StoredVoice) -> int:
        return self.sample_rate if isinstance(voice, StoredVoice) else self.voices[voice].sample_rate


class Engines:
    def __init__(self) -> None:
        self.by_name: dict[str, EngineRuntime] = {}

    def add(self, synthesizer: SpeechSynthesizer) -> None:
        """Put a loaded (and self-tested) copy in service; call on the event loop."""
        runtime = self.by_name.get(synthesizer.engine)
        if runtime is None:
            runtime = EngineRuntime(
                synthesizer.engine,
                synthesizer.cloning,
                synthesizer.sample_rate,
                synthesizer.numbers_written_out,
                {v.id: v for v in synthesizer.voices()},
                synthesizer.new_context,
                ModelPool(f"tts-{synthesizer.engine}"),
                synthesizer.speaks_phrases,
            )
            self.by_name[synthesizer.engine] = runtime
        runtime.pool.add(synthesizer)

    @property
    def ready(self) -> bool:
        return bool(self.by_name)

    def cloners(self) -> list[EngineRuntime]:
        return [e for e in self.by_name.values() if e.cloning]

    def builtin_voices(self) -> list[tuple[EngineRuntime, VoiceInfo]]:
        return [(e, v) for e in self.by_name.values() for v in e.voices.values()]

    def for_builtin(self, voice_id: str, engine: str) -> EngineRuntime | None:
        """The engine of a built-in voice (None when no engine here has it); VoiceError if `engine` is another."""
        for runtime, voice in self.builtin_voices():
            if voice.id == voice_id:
                if engine and engine != runtime.name:
                    raise VoiceError(f"voice {voice_id!r} belongs to the {runtime.name} engine, not {engine}", False)
                return runtime
        return None

    def for_stored(self, voice_id: str, engine: str) -> EngineRuntime:
        """The engine to speak a stored (cloned) voice with; VoiceError when none here can."""
        cloners = [e for e in self.cloners() if not engine or e.name == engine]
        if not cloners:
            running = ", ".join(self.by_name) or "none"
            raise VoiceError(
                f"voice {voice_id!r} is a cloned voice, and no engine here can clone (running: {running}); "
                "cloned voices need the fireredtts2 engine (PARLEY_TTS_ENGINES=piper,fireredtts2, on a GPU)",
                False,
            )
        return cloners[0]

    def by_engine(self, engine: str) -> EngineRuntime:
        if engine not in self.by_name:
            raise VoiceError(f"no engine {engine!r} here; running: {', '.join(self.by_name)}", False)
        return self.by_name[engine]


class Conversations:
    """Engine contexts of recent conversations, so a reply goes on from the earlier ones (least recent dropped).

    One reply of a conversation speaks at a time: a reply started while the previous one
    is still winding down (a barge-in) waits for it, so two model copies never write one context.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._known: OrderedDict[str, tuple[str, Context, asyncio.Lock]] = OrderedDict()

    @contextlib.asynccontextmanager
    async def context(self, conversation_id: str, engine: EngineRuntime, make: Context) -> AsyncIterator[Context]:
        """The conversation's context for `engine` (or `make`, kept from now on), held for one reply."""
        if not conversation_id:
            yield make
            return
        known = self._known.pop(conversation_id, None)
        if known is None or known[0] != engine.name:
            known = (engine.name, make, asyncio.Lock())
        self._known[conversation_id] = known
        while len(self._known) > self.limit:
            self._known.popitem(last=False)
        async with known[2]:
            yield known[1]


async def spoken_chunks(
    engine: EngineRuntime,
    utterance: Utterance,
    context: Context,
    out_rate: int,
    chunk_ms: int,
    queue_timeout_s: float,
    heard: list[Float32Array] | None = None,
) -> AsyncIterator[Float32Array]:
    """One utterance as audio at `out_rate` in pieces of at most `chunk_ms`, as the engine speaks it.

    `heard`, if given, collects the audio at the engine's rate (for the speaker-similarity score).
    Raises parley.models.PoolTimeout when every copy stayed busy.
    """
    native = engine.rate_of(utterance.voice)
    resampler = StreamResampler(native, out_rate)
    chunk = max(1, out_rate * chunk_ms // 1000)
    async with (
        engine.pool.lease(queue_timeout_s) as model,
        model.stream(lambda synthesizer: synthesizer.synthesize(utterance, context)) as pieces,
    ):
        async for audio in pieces:
            if heard is not None:
                heard.append(audio)
            samples = resampler.push(audio)
            for offset in range(0, samples.size, chunk):
                yield samples[offset : offset + chunk]
    tail = resampler.push(np.zeros(0, dtype=np.float32), last=True)
    if tail.size:
        yield tail
