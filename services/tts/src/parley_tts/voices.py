"""Stored (cloned) voices: checked uploads, and a store in NATS JetStream that every instance shares.

A voice is its profile (name, language, the reference's transcript, duration and speaker
embedding, and which engines have prompt codes for it) in a KV bucket, and its blobs in an
object store: the reference recording (16 kHz mono 16-bit WAV) and, per cloning engine, the
prompt codes that engine computed from it once. Every TTS instance on every pod sees the same
voices, and they survive restarts of the instances and of NATS (JetStream keeps them on disk).

Writes are ordered so that a reader never sees a half-made voice: blobs first, then the
profile; a delete removes the profile first, then the blobs. Prompt codes may be added later
(an instance with a cloning engine meets a voice created where none ran): the profile's
engine list is then updated with a compare-and-set on its revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import secrets
import time
from dataclasses import dataclass

import numpy as np
import soundfile
import soxr
from nats.aio.client import Client as NatsClient
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore
from pydantic import BaseModel, Field

from parley.audio_files import AudioFileError, AudioTooLong, decode_audio
from parley.pcm import Float32Array

REFERENCE_RATE = 16000  # what references are stored at: the cloning codec and the embedder read 16 kHz
VOICE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_SLUG_DROP = re.compile(r"[^a-z0-9]+")
# Below this fraction of full scale a sample counts as clipped when this share of the samples sits there.
CLIP_LEVEL = 0.999


class ReferenceError(ValueError):
    """An upload that cannot become a voice; the message is for the user and names the limit."""


class VoiceStoreUnavailable(RuntimeError):
    pass


class ReferenceLimits(BaseModel):
    """What a reference recording must be (from the service's settings)."""

    max_bytes: int = 10_000_000
    min_s: float = 3.0
    max_s: float = 30.0
    min_sample_rate: int = 16000
    min_rms_dbfs: float = -45.0
    max_clipped_share: float = 0.001
    max_transcript_chars: int = 1000


@dataclass(frozen=True)
class Reference:
    """A checked reference recording, at REFERENCE_RATE."""

    samples: Float32Array
    duration_s: float
    source_rate: int
    rms_dbfs: float
    peak: float


def check_reference(data: bytes, limits: ReferenceLimits) -> Reference:
    """Decode an upload with a real decoder and check it against the limits (blocking: run it in a thread)."""
    try:
        decoded = decode_audio(data, max_bytes=limits.max_bytes, max_duration_s=limits.max_s)
    except AudioTooLong:
        raise ReferenceError(
            f"the reference is longer than {limits.max_s:g} s (PARLEY_TTS_MAX_REFERENCE_S): use 3-30 s of one speaker"
        ) from None
    except AudioFileError as exc:
        raise ReferenceError(str(exc)) from None
    duration = decoded.duration_s
    if duration < limits.min_s:
        raise ReferenceError(
            f"the reference is {duration:.1f} s long; "
            f"at least {limits.min_s:g} s is needed (PARLEY_TTS_MIN_REFERENCE_S)"
        )
    if decoded.sample_rate < limits.min_sample_rate:
        raise ReferenceError(
            f"the reference is sampled at {decoded.sample_rate} Hz; at least {limits.min_sample_rate} Hz is needed "
            "(telephone-band audio clones badly)"
        )
    samples = decoded.samples
    peak = float(np.max(np.abs(samples)))
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    rms_dbfs = 20 * np.log10(max(rms, 1e-10))
    if rms_dbfs < limits.min_rms_dbfs:
        raise ReferenceError(
            f"the reference is silent or too quiet ({rms_dbfs:.0f} dBFS; at least {limits.min_rms_dbfs:g} dBFS)"
        )
    clipped = float(np.mean(np.abs(samples) >= CLIP_LEVEL))
    if clipped > limits.max_clipped_share:
        raise ReferenceError(
            f"the reference is clipped ({clipped:.1%} of its samples at full scale): record it less loud"
        )
    if decoded.sample_rate != REFERENCE_RATE:
        samples = np.asarray(soxr.resample(samples, decoded.sample_rate, REFERENCE_RATE, quality="HQ"), np.float32)
    return Reference(np.clip(samples, -1, 1), duration, decoded.sample_rate, round(rms_dbfs, 1), round(peak, 4))


def new_voice_id(name: str) -> str:
    """A readable, unique id: the name's slug and a random suffix ("Ana María" -> "ana-mar-a-3f9a2c")."""
    slug = _SLUG_DROP.sub("-", name.lower()).strip("-")[:40].strip("-") or "voice"
    return f"{slug}-{secrets.token_hex(3)}"


def reference_wav(reference: Reference) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, reference.samples, REFERENCE_RATE, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def reference_samples(wav: bytes) -> Float32Array:
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    if rate != REFERENCE_RATE:
        raise ValueError(f"a stored reference is at {rate} Hz, not {REFERENCE_RATE}")
    return np.asarray(samples, dtype=np.float32)


class VoiceProfile(BaseModel):
    """A stored voice's metadata (the KV value)."""

    id: str
    name: str
    language: str
    transcript: str
    duration_s: float
    source_sample_rate: int
    created_at_unix_ms: int = Field(default_factory=lambda: int(time.time() * 1000))
    embedding: list[float] = Field(default_factory=list, description="Speaker embedding of the reference")
    codes: list[str] = Field(default_factory=list, description="Engines whose prompt codes are stored")


def _audio_object(voice_id: str) -> str:
    return f"{voice_id}/reference.wav"


def _codes_object(voice_id: str, engine: str) -> str:
    return f"{voice_id}/codes/{engine}.npy"


class VoiceStore:
    """The shared voices, over one NATS connection (which reconnects by itself)."""

    def __init__(self, js: JetStreamContext, bucket: str, profiles: KeyValue, blobs: ObjectStore) -> None:
        self._js = js
        self._bucket = bucket
        self._profiles = profiles
        self._blobs = blobs
        self._codes_cache: dict[tuple[str, str], bytes] = {}

    @classmethod
    async def open(cls, nc: NatsClient, bucket: str = "parley_voices") -> VoiceStore:
        """Bind to (creating if needed) the KV bucket `bucket` and the object store `<bucket>_blobs`."""
        js = nc.jetstream()
        try:
            profiles = await js.key_value(bucket)
        except BucketNotFoundError:
            profiles = await js.create_key_value(bucket=bucket, history=1, description="Parley stored voices")
        try:
            blobs = await js.object_store(f"{bucket}_blobs")
        except (BucketNotFoundError, NotFoundError):
            blobs = await js.create_object_store(f"{bucket}_blobs", description="Parley voice references and codes")
        return cls(js, bucket, profiles, blobs)

    async def create(self, profile: VoiceProfile, reference: bytes, codes: dict[str, bytes]) -> VoiceProfile:
        """Store a new voice; returns its profile as stored (listing the engines whose codes came with it)."""
        for engine, data in codes.items():
            await self._blobs.put(_codes_object(profile.id, engine), data)
        await self._blobs.put(_audio_object(profile.id), reference)
        profile = profile.model_copy(update={"codes": sorted(codes)})
        try:
            await self._profiles.create(profile.id, profile.model_dump_json().encode())
        except BaseException:
            await self._delete_blobs(profile.id, list(codes))
            raise
        return profile

    async def get(self, voice_id: str) -> VoiceProfile | None:
        if not VOICE_ID.match(voice_id):
            return None
        try:
            entry = await self._profiles.get(voice_id)
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return VoiceProfile.model_validate_json(entry.value)

    async def all(self) -> list[VoiceProfile]:
        found = await asyncio.gather(*(self.get(key) for key in await self._keys()))
        return sorted((p for p in found if p is not None), key=lambda p: p.created_at_unix_ms)

    async def _keys(self) -> list[str]:
        """Every key with a message in the bucket's stream (deleted ones too: `get` drops those).

        Not `KeyValue.keys()`: that watches the bucket and takes "nothing pending" in the consumer's
        info as the end, which a busy server reports before it sent the keys: the listing came back
        empty right after a save. The stream's per-subject counts are one request and complete.
        """
        prefix = f"$KV.{self._bucket}."
        info = await self._js.stream_info(f"KV_{self._bucket}", subjects_filter=f"{prefix}>")
        return [subject.removeprefix(prefix) for subject in info.state.subjects or {}]

    async def delete(self, voice_id: str) -> bool:
        profile = await self.get(voice_id)
        if profile is None:
            return False
        await self._profiles.delete(voice_id)
        await self._delete_blobs(voice_id, profile.codes)
        self._codes_cache = {k: v for k, v in self._codes_cache.items() if k[0] != voice_id}
        return True

    async def reference(self, voice_id: str) -> bytes:
        result = await self._blobs.get(_audio_object(voice_id))
        return bytes(result.data or b"")

    async def codes(self, profile: VoiceProfile, engine: str) -> bytes | None:
        """`engine`'s prompt codes for the voice, or None when that engine has none stored yet."""
        key = (profile.id, engine)
        if key in self._codes_cache:
            return self._codes_cache[key]
        if engine not in profile.codes:
            return None
        try:
            result = await self._blobs.get(_codes_object(profile.id, engine))
        except NotFoundError:
            return None
        data = bytes(result.data or b"")
        self._codes_cache[key] = data
        return data

    async def add_codes(self, voice_id: str, engine: str, data: bytes) -> None:
        """Store codes computed after the voice was made, and list the engine in its profile."""
        await self._blobs.put(_codes_object(voice_id, engine), data)
        self._codes_cache[(voice_id, engine)] = data
        for _ in range(10):  # another instance may be updating the same profile
            try:
                entry = await self._profiles.get(voice_id)
            except KeyNotFoundError:
                return  # deleted meanwhile
            if entry.value is None:
                return
            profile = VoiceProfile.model_validate_json(entry.value)
            if engine in profile.codes:
                return
            profile.codes = sorted({*profile.codes, engine})
            try:
                await self._profiles.update(voice_id, profile.model_dump_json().encode(), last=entry.revision)
                return
            except KeyWrongLastSequenceError:
                continue

    async def _delete_blobs(self, voice_id: str, engines: list[str]) -> None:
        for name in [_audio_object(voice_id), *(_codes_object(voice_id, e) for e in engines)]:
            with contextlib.suppress(NotFoundError):
                await self._blobs.delete(name)
