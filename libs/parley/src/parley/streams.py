"""Reading client audio streams and per-stream options on the server side."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Any, TypeVar

import grpc
import numpy as np
from pydantic import BaseModel, ValidationError

from parley.audio.v1.audio_pb2 import AudioChunk
from parley.pcm import BYTES_PER_SAMPLE, Float32Array, StreamResampler, pcm16_to_float

OPTION_PREFIX = "parley-"
# How long a refused stream's remaining requests are read before the refusal is sent anyway.
REFUSAL_READ_S = 2.0
MAX_SAMPLE_RATE = 48000
Options = TypeVar("Options", bound=BaseModel)


class StreamAborted(Exception):
    """The client stream ended without its end_of_stream marker (cancelled)."""


async def audio_chunks(
    requests: AsyncIterable[AudioChunk], context: grpc.aio.ServicerContext, max_chunk_bytes: int
) -> AsyncIterator[AudioChunk]:
    """Yield validated chunks up to and including the end marker.

    Aborts the call with INVALID_ARGUMENT for malformed audio, and raises
    StreamAborted when the stream ends without `end_of_stream`.
    """
    async for chunk in requests:
        if len(chunk.pcm) % BYTES_PER_SAMPLE:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "pcm must hold whole 16-bit samples")
        if len(chunk.pcm) > max_chunk_bytes:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"chunk of {len(chunk.pcm)} bytes exceeds {max_chunk_bytes}"
            )
        if chunk.pcm and not 8000 <= chunk.sample_rate <= MAX_SAMPLE_RATE:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sample_rate must be 8000..48000")
        yield chunk
        if chunk.end_of_stream:
            return
    raise StreamAborted


async def audio_samples(
    requests: AsyncIterable[AudioChunk], context: grpc.aio.ServicerContext, sample_rate: int, max_chunk_ms: int
) -> AsyncIterator[tuple[Float32Array, bool]]:
    """A client audio stream as float samples at `sample_rate`, with each chunk's end_of_stream flag.

    Validates like `audio_chunks` (chunks longer than `max_chunk_ms` at the
    highest accepted rate are refused) and follows rate changes mid-stream.
    """
    max_chunk_bytes = MAX_SAMPLE_RATE * BYTES_PER_SAMPLE * max_chunk_ms // 1000
    resampler: StreamResampler | None = None
    async for chunk in audio_chunks(requests, context, max_chunk_bytes):
        samples = np.zeros(0, dtype=np.float32)
        if chunk.pcm:
            if resampler is None or resampler.from_rate != chunk.sample_rate:
                resampler = StreamResampler(chunk.sample_rate, sample_rate)
            samples = resampler.push(pcm16_to_float(chunk.pcm))
        yield samples, chunk.end_of_stream


async def read_to_end(requests: AsyncIterator[Any], timeout_s: float = REFUSAL_READ_S) -> None:
    """Read and drop a client's remaining requests until it stops writing (at most `timeout_s`).

    Call before refusing a call whose client may still be writing: a grpc.aio client whose write
    fails because the server already ended the call reports INTERNAL, overwriting the status the
    server sent (grpc/grpc#36066), so the refusal reaches it intact only once it stopped writing.
    """
    with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError):
        async with asyncio.timeout(timeout_s):
            async for _ in requests:
                pass


async def stream_options(context: grpc.aio.ServicerContext, model: type[Options]) -> Options:
    """Per-stream options from `parley-*` request metadata, validated by `model`."""
    values = {
        key[len(OPTION_PREFIX) :].replace("-", "_"): value
        for key, value in (context.invocation_metadata() or ())
        if isinstance(key, str) and key.startswith(OPTION_PREFIX) and isinstance(value, str)
    }
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad stream options: {exc.errors()[0]['msg']}")
        raise  # abort raises; this keeps type checkers aware


def options_metadata(options: BaseModel | Mapping[str, object]) -> tuple[tuple[str, str], ...]:
    """The client side of `stream_options`: options as request metadata (None values left out)."""
    values = options.model_dump() if isinstance(options, BaseModel) else options
    return tuple(
        (OPTION_PREFIX + key.replace("_", "-"), str(value)) for key, value in values.items() if value is not None
    )
