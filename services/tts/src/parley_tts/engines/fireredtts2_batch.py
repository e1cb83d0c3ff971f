"""Many FireRedTTS2 streams from one model copy: one batched backbone step and 15 batched decoder passes a frame.

Upstream serves one stream per model copy: torchtune's KV cache keeps a single write position for the
whole batch, so streams at different points of their speech cannot share a forward pass, and every
listener needs another ~9 GB copy. Here every attention layer gets a cache with a slot per stream,
written at each row's own position (`SlotKVCache`), and each forward gets the matching per-row causal
mask. Streams join at any frame boundary (their prompt is prefilled alone, which also samples their
first frame) and leave at any other; between those, one `step` makes one frame for every stream that
asks for one.

The model's own modules do all the maths: torchtune's layers take per-row `input_pos` (rotary
positions) and a boolean mask as they are; the package's embeddings, projection and heads are used
as in `Model.generate_frame`. Only the caches, the masks and the sampling are ours. Sampling follows
upstream's `sample_topk` row by row, drawing from the stream's own `torch.Generator` in the order
`generate_frame` draws from the global one (codebook 0, then 1..15), so a stream makes exactly the
frames it makes alone, whoever shares its batch; a stream without a generator draws from the global
one, which makes a lone stream identical to upstream's `generate_frame` under the same seed.

`SharedCopy` lets the threads of several streams (the TTS service runs one per stream) share one copy:
the engine drives it when `PARLEY_TTS_FIREREDTTS2_STREAMS_PER_COPY` is above 1. Given the codec, the same
step also decodes the audio of each stream's previous frame in one batched codec pass
(`fireredtts2_codec_batch.CodecSlots`, a slot per stream, the same slot number as here).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from parley_tts.engines.fireredtts2_codec_batch import CodecSlots

if TYPE_CHECKING:
    from fireredtts2.codec.model import RedCodecInfer
    from fireredtts2.llm.llm import Model
    from torchtune.modules import TransformerDecoder

# Upstream samples codebooks 1..15 with these, whatever the request says (`Model.generate_frame`).
DECODER_TOP_K = 10
DECODER_TEMPERATURE = 0.75


class BatchFull(Exception):
    """Every slot of the model copy holds a stream."""


@dataclass
class Sampling:
    """How one stream samples codebook 0 (upstream's `temperature` and `topk`), and from which generator."""

    temperature: float = 0.9
    top_k: int = 30
    generator: torch.Generator | None = None


@dataclass
class _Rows:
    """Which cache slot each row of the running forward is, and at which positions its tokens sit."""

    slots: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # (b,)
    positions: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.long))  # (b, s)


class SlotKVCache(nn.Module):
    """One attention layer's keys and values for every slot; a forward writes each row at its own positions.

    It stands in for torchtune's `KVCache` (the attention module calls `update(k, v)` and attends to
    what it returns): the rows' full caches, of which the mask lets each row see only its own past.
    """

    k_cache: torch.Tensor  # (slots, kv_heads, max_len, head_dim)
    v_cache: torch.Tensor

    def __init__(
        self, rows: _Rows, slots: int, num_kv_heads: int, max_len: int, head_dim: int, dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.rows = rows
        shape = (slots, num_kv_heads, max_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype), persistent=False)

    def reset(self) -> None:
        """Nothing to clear: a slot's stale entries sit beyond its position, where the mask hides them."""

    def update(self, k_val: torch.Tensor, v_val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: (b, kv_heads, s, head_dim) of the rows' new tokens; returns the rows' caches (b, kv_heads, L, hd)."""
        slots, positions = self.rows.slots, self.rows.positions
        index = (slots[:, None], slice(None), positions)  # (b, s) pairs: the written tensor is (b, s, kv, hd)
        self.k_cache[index] = k_val.transpose(1, 2)
        self.v_cache[index] = v_val.transpose(1, 2)
        return self.k_cache[slots], self.v_cache[slots]


class _SlotTransformer:
    """A torchtune `TransformerDecoder` whose attention layers keep a cache slot per stream."""

    def __init__(self, transformer: TransformerDecoder, slots: int, max_len: int, dtype: torch.dtype) -> None:
        self.transformer = transformer
        self.max_len = max_len
        self.rows = _Rows()
        device = next(transformer.parameters()).device
        for layer in transformer.layers:
            attention = layer.attn
            cache = SlotKVCache(self.rows, slots, attention.num_kv_heads, max_len, attention.head_dim, dtype)
            attention.kv_cache = cache.to(device)
            attention.cache_enabled = True

    def __call__(self, h: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """h: (b, s, dim) for rows in `slots` at `positions` (b, s); each row attends to its own slot up to there."""
        self.rows.slots, self.rows.positions = slots, positions
        visible = torch.arange(self.max_len, device=h.device)[None, None, :] <= positions[:, :, None]
        out: torch.Tensor = self.transformer(h, input_pos=positions, mask=visible)
        return out


def _sample(logits: torch.Tensor, top_k: int, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Upstream's `sample_topk` for one row (1, vocab) -> (1, 1), its noise drawn from `generator`."""
    logits = logits / temperature
    kth = torch.topk(logits, top_k)[0][..., -1, None]
    logits = logits.masked_fill(logits < kth, -float("inf"))
    probs = torch.softmax(torch.log_softmax(logits, dim=-1), dim=-1)
    noise = torch.empty_like(probs).exponential_(1, generator=generator)
    return torch.argmax(probs / noise, dim=-1, keepdim=True).to(dtype=torch.int)


@dataclass
class _Stream:
    slot: int
    position: int  # where its next token goes
    sampling: Sampling


class FrameBatcher:
    """Frames for up to `max_streams` streams from one FireRedTTS2 `Model`, one batched pass per frame.

    Not thread-safe: one thread drives it (the model copy's own), as every model object here.
    """

    def __init__(self, model: Model, max_streams: int, scratch_slot: bool = False) -> None:
        """`scratch_slot`: one more cache slot, never a stream's, for the padding rows of a fixed-shape step."""
        self.model = model
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        self.codebooks: int = model.config.audio_num_codebooks
        backbone: TransformerDecoder = model.backbone
        self.max_seq_len: int = backbone.max_seq_len
        slots = max_streams + 1 if scratch_slot else max_streams
        self.scratch_slot: int | None = max_streams if scratch_slot else None
        self.backbone = _SlotTransformer(backbone, slots, self.max_seq_len, self.dtype)
        self.decoder = _SlotTransformer(model.decoder, slots, self.codebooks, self.dtype)
        self.free = list(range(max_streams - 1, -1, -1))
        self.streams: dict[int, _Stream] = {}
        # The frame step of fixed shapes (fireredtts2_graphs.GraphedFrameStep) when one is set; else `_frames`.
        self.fast_step: Callable[[list[_Stream], dict[int, torch.Tensor]], torch.Tensor] | None = None

    @property
    def capacity(self) -> int:
        return len(self.free)

    @torch.inference_mode()
    def join(self, tokens: torch.Tensor, mask: torch.Tensor, sampling: Sampling) -> tuple[int, torch.Tensor]:
        """Admit a stream with its prompt (s, 17) and mask; its id and its first frame (16 codes)."""
        if not self.free:
            raise BatchFull(f"all {len(self.streams)} stream slots of this model copy are in use")
        length = tokens.shape[0]
        if not 0 < length < self.max_seq_len:
            raise ValueError(f"a prompt of {length} frames does not fit a context of {self.max_seq_len}")
        stream = _Stream(self.free.pop(), length, sampling)
        self.streams[stream.slot] = stream
        positions = torch.arange(length, device=self.device)[None, :]
        frames = self._frames([stream], tokens[None].to(self.device), mask[None].to(self.device), positions)
        return stream.slot, frames[0]

    @torch.inference_mode()
    def step(self, last_frames: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """The next frame of each stream in `last_frames` (stream id -> the frame it made last, fed back)."""
        streams = [self.streams[stream_id] for stream_id in last_frames]
        for stream in streams:
            if stream.position >= self.max_seq_len:
                raise ValueError(f"stream {stream.slot} has used its context of {self.max_seq_len} frames")
        if self.fast_step is not None:
            made = self.fast_step(streams, last_frames)
            for stream in streams:
                stream.position += 1
            return {stream.slot: frame for stream, frame in zip(streams, made, strict=True)}
        frames = torch.stack([last_frames[s.slot].to(self.device).long() for s in streams])  # (b, 16)
        text = torch.zeros((len(streams), 1), dtype=torch.long, device=self.device)
        tokens = torch.cat([frames, text], dim=1)[:, None, :]  # (b, 1, 17): the codebooks count, the text not
        mask = torch.cat([torch.ones_like(frames, dtype=torch.bool), text.bool()], dim=1)[:, None, :]
        positions = torch.tensor([[s.position] for s in streams], device=self.device)
        made = self._frames(streams, tokens, mask, positions)
        return {stream.slot: frame for stream, frame in zip(streams, made, strict=True)}

    def has_room(self, stream_id: int) -> bool:
        """Whether the stream's context has a place for one more frame."""
        return self.streams[stream_id].position < self.max_seq_len

    def leave(self, stream_id: int) -> None:
        """The stream ended (EOS, its limit, cancelled): its slot takes the next one."""
        if self.streams.pop(stream_id, None) is not None:
            self.free.append(stream_id)

    def _frames(
        self, streams: list[_Stream], tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """`Model.generate_frame` for a batch of rows, each in its own cache slot: (b, 16) codes."""
        model = self.model
        slots = torch.tensor([s.slot for s in streams], device=self.device)
        embeds = model._embed_tokens(tokens)
        h = (embeds * mask.unsqueeze(-1)).sum(dim=2)
        h = self.backbone(h, slots, positions).to(dtype=self.dtype)
        last_h = h[:, -1, :]
        c0_logits = model.codebook0_head(last_h)
        c0 = torch.cat(
            [
                _sample(c0_logits[i : i + 1], s.sampling.top_k, s.sampling.temperature, s.sampling.generator)
                for i, s in enumerate(streams)
            ]
        )
        curr_h = torch.cat([last_h.unsqueeze(1), model._embed_audio(0, c0)], dim=1)
        codes = [c0]
        rows = torch.arange(len(streams), device=self.device)  # the decoder's slots: one per row, every frame anew
        curr_pos = torch.arange(curr_h.size(1), device=self.device)[None, :].repeat(len(streams), 1)
        for i in range(1, self.codebooks):
            decoder_h = self.decoder(model.projection(curr_h), rows, curr_pos).to(dtype=self.dtype)
            ci_logits = torch.mm(decoder_h[:, -1, :], model.audio_head[i - 1])
            ci = torch.cat(
                [
                    _sample(ci_logits[r : r + 1], DECODER_TOP_K, DECODER_TEMPERATURE, s.sampling.generator)
                    for r, s in enumerate(streams)
                ]
            )
            curr_h = model._embed_audio(i, ci)
            codes.append(ci)
            curr_pos = curr_pos[:, -1:] + 1
        for stream, row_positions in zip(streams, positions, strict=True):
            stream.position = int(row_positions[-1]) + 1
        return torch.cat(codes, dim=1)


# What a stream's thread gets from a shared step: its next frame, and its previous frame's audio if it
# asked for it (1-D samples, decoded as the last of its speech when the next frame is the end of speech).
FrameAndAudio = tuple[torch.Tensor, torch.Tensor | None]


class SharedCopy:
    """One model copy shared by the threads of up to `max_streams` streams, one `FrameBatcher` step a frame.

    Each stream's thread asks for its next frame (`next_frame`, or `next_frame_and_audio` to have its
    previous frame decoded in the same step); whichever asks while no step runs makes one step for every
    frame asked for by then, and hands each thread its own: no scheduler thread, and a step waits for
    nobody (a stream that is late joins the next one). Given the codec, a step decodes every frame handed
    in for decoding in one batched pass (`CodecSlots`) after the LLM's, as the LLM's step tells whether
    each is a stream's last. A stream's prefill holds `model_lock` (the LLM's), and the codec's encode
    and decode hold `codec_lock`, so neither model is ever used by two threads at once, and encoding a
    spoken turn never holds up the others' frames.
    """

    def __init__(
        self, model: Model, max_streams: int, codec: RedCodecInfer | None = None, scratch_slot: bool = False
    ) -> None:
        self.batcher = FrameBatcher(model, max_streams, scratch_slot=scratch_slot)
        self.codec = CodecSlots(codec, max_streams) if codec is not None else None
        self.model_lock = threading.Lock()
        self.codec_lock = threading.Lock()
        self._queue = threading.Condition()
        self._waiting: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}  # stream -> last frame, to decode
        self._done: dict[int, FrameAndAudio | BaseException] = {}
        self._stepping = False
        self.largest_step = 0  # the most streams one step has served (a measure of the batching)
        self.largest_decode = 0  # the most frames one codec pass has decoded

    def join(self, tokens: torch.Tensor, mask: torch.Tensor, sampling: Sampling) -> tuple[int, torch.Tensor]:
        with self.model_lock:
            stream, frame = self.batcher.join(tokens, mask, sampling)
        if self.codec is not None:
            with self.codec_lock:
                self.codec.start(stream)
        return stream, frame

    def leave(self, stream: int) -> None:
        if self.codec is not None:  # first: once the batcher frees the slot, a newcomer may start it
            with self.codec_lock:
                self.codec.finish(stream)
        with self.model_lock:
            self.batcher.leave(stream)

    def decode(self, stream: int, frame: torch.Tensor, last: bool) -> torch.Tensor:
        """One frame's audio (16 codes) for the stream outside a step: its speech's last, once at its bound."""
        if self.codec is None:
            raise RuntimeError("this shared copy was made without its codec")
        with self.codec_lock:
            return self.codec.decode({stream: (frame, last)})[stream]

    def next_frame(self, stream: int, last: torch.Tensor) -> torch.Tensor:
        """The stream's next frame (16 codes), `last` being the frame it made last."""
        return self.next_frame_and_audio(stream, last, None)[0]

    def next_frame_and_audio(self, stream: int, last: torch.Tensor, to_decode: torch.Tensor | None) -> FrameAndAudio:
        """The stream's next frame, and the audio of `to_decode` (16 codes, typically the frame before `last`)
        decoded in the same step, as its speech's last if the next frame is the end of speech (all zero)."""
        with self._queue:
            self._waiting[stream] = (last, to_decode)
            while stream not in self._done:
                if self._stepping:
                    self._queue.wait()
                    continue
                batch, self._waiting, self._stepping = self._waiting, {}, True
                self._queue.release()  # others queue their frames while this step runs
                try:
                    made = self._step(batch)
                finally:
                    self._queue.acquire()
                self._stepping = False
                self.largest_step = max(self.largest_step, len(batch))
                self._done.update(made)
                self._queue.notify_all()
            result = self._done.pop(stream)
        if isinstance(result, BaseException):
            raise result
        return result

    def _step(
        self, batch: dict[int, tuple[torch.Tensor, torch.Tensor | None]]
    ) -> dict[int, FrameAndAudio | BaseException]:
        """One LLM step for every stream of `batch`, then one codec pass for those with a frame to decode."""
        done: dict[int, FrameAndAudio | BaseException] = {}
        for full in [s for s in batch if not self.batcher.has_room(s)]:  # only it fails
            done[full] = ValueError(f"stream {full} has used its context of {self.batcher.max_seq_len}")
        ready = {s: last for s, (last, _) in batch.items() if s not in done}
        try:
            with self.model_lock:
                frames = self.batcher.step(ready) if ready else {}
        except Exception as error:  # each stream of the step hears of it, with an error of its own
            done.update({s: RuntimeError(f"the shared frame step failed: {error!r}") for s in ready})
            return done
        decodes = {
            s: (frame, not bool(frames[s].any()))
            for s, (_, frame) in batch.items()
            if frame is not None and s in frames and self.codec is not None
        }
        audio: dict[int, torch.Tensor] = {}
        try:
            if decodes:
                assert self.codec is not None
                with self.codec_lock:
                    audio = self.codec.decode(decodes)
                self.largest_decode = max(self.largest_decode, len(decodes))
        except Exception as error:
            done.update({s: RuntimeError(f"the shared codec pass failed: {error!r}") for s in decodes})
        for s, frame in frames.items():
            done.setdefault(s, (frame, audio.get(s)))
        return done
