"""The GPU fast path of `FrameBatcher.step`: a frame step of fixed shapes, replayed as a CUDA graph.

An eager frame step launches several thousand small kernels (a backbone step, 15 decoder passes,
and per-row sampling after each), so on a GPU the host, not the GPU, sets the pace. A CUDA graph
replays the whole step as one launch, but only for fixed shapes and with no host round trip inside.
So the step is rewritten to take everything that varies as tensors in fixed buffers:

- the batch is padded up to a bucket size (1, 2, 4, ... up to the copy's streams), one graph per
  bucket; padding rows write into the batcher's scratch slot, which no stream ever holds;
- each row's temperature and top-k are tensors, and top-k takes the k-th largest logit from a sort
  (upstream takes it from `torch.topk(logits, k)`; the value is the same);
- the sampling noise is drawn before the step from each stream's own generator, all 16 codebooks'
  at once. On the CPU that is the same sequence of numbers `FrameBatcher` draws one codebook at a
  time, so `StaticFrameStep` run eagerly makes exactly the frames of the eager step (tested here,
  where there is no GPU); on a GPU the numbers differ but come from the same distribution, and a
  stream still makes exactly the frames it makes alone, whoever shares its batch.

`StaticFrameStep` is the step as plain tensor code (it runs anywhere); `GraphedFrameStep` captures
it per bucket on CUDA (`PARLEY_TTS_FIREREDTTS2_CUDA_GRAPHS`). The prefill of a joining stream stays
eager: its length varies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from parley_tts.engines.fireredtts2_batch import DECODER_TEMPERATURE, DECODER_TOP_K

if TYPE_CHECKING:
    from parley_tts.engines.fireredtts2_batch import FrameBatcher, _Stream


def batch_buckets(max_streams: int) -> tuple[int, ...]:
    """The batch sizes a step is padded to: powers of two below `max_streams`, and `max_streams` itself."""
    sizes = {max_streams}
    size = 1
    while size < max_streams:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


@dataclass
class StepInputs:
    """Everything one frame step of `rows` rows reads; a graph reads them from these very tensors."""

    frames: torch.Tensor  # (rows, codebooks) long: each row's last frame, fed back
    slots: torch.Tensor  # (rows,) long: each row's cache slot
    positions: torch.Tensor  # (rows, 1) long: where each row's next token goes
    temperature: torch.Tensor  # (rows, 1) codebook 0's temperature, in the logits' computation type
    top_k: torch.Tensor  # (rows, 1) long: codebook 0's top-k
    noise: torch.Tensor  # (rows, codebooks, audio vocab): the exponential noise each codebook's sample divides by

    @classmethod
    def allocate(cls, rows: int, codebooks: int, vocab: int, dtype: torch.dtype, device: torch.device) -> StepInputs:
        return cls(
            frames=torch.zeros((rows, codebooks), dtype=torch.long, device=device),
            slots=torch.zeros(rows, dtype=torch.long, device=device),
            positions=torch.zeros((rows, 1), dtype=torch.long, device=device),
            temperature=torch.ones((rows, 1), dtype=_computation_type(dtype), device=device),
            top_k=torch.ones((rows, 1), dtype=torch.long, device=device),
            noise=torch.ones((rows, codebooks, vocab), dtype=dtype, device=device),
        )

    @property
    def rows(self) -> int:
        return int(self.frames.shape[0])

    def fill(self, streams: Sequence[_Stream], last_frames: dict[int, torch.Tensor], padding_slot: int) -> None:
        """Write `streams` into the first rows (their noise drawn now) and make the rest harmless padding.

        One copy per field, not one per row and field: on a GPU each is a launch of its own.
        """
        live = len(streams)
        if live:
            self.frames[:live].copy_(torch.stack([last_frames[stream.slot] for stream in streams]))
            self.slots[:live].copy_(torch.tensor([stream.slot for stream in streams]))
            self.positions[:live, 0].copy_(torch.tensor([stream.position for stream in streams]))
            temperatures = [stream.sampling.temperature for stream in streams]
            self.temperature[:live, 0].copy_(torch.tensor(temperatures, dtype=self.temperature.dtype))
            self.top_k[:live, 0].copy_(torch.tensor([stream.sampling.top_k for stream in streams]))
        for row, stream in enumerate(streams):
            # All 16 codebooks' noise in one draw: on the CPU the same numbers as 16 draws in a row.
            self.noise[row].exponential_(1, generator=stream.sampling.generator)
        if live < self.rows:
            padding = slice(live, None)
            self.frames[padding] = 0
            self.slots[padding] = padding_slot
            self.positions[padding] = 0
            self.temperature[padding] = 1
            self.top_k[padding] = 1
            self.noise[padding] = 1


def _computation_type(dtype: torch.dtype) -> torch.dtype:
    """The type PyTorch computes `logits / temperature` in for logits of `dtype` (float32 for bf16/fp16)."""
    return torch.promote_types(dtype, torch.float32)


def sample_rows(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Upstream's `sample_topk` for every row at once, with per-row settings and noise given: (rows, 1) int."""
    logits = (logits.to(temperature.dtype) / temperature).to(logits.dtype)
    kth = torch.sort(logits, dim=-1, descending=True).values.gather(1, top_k - 1)
    logits = logits.masked_fill(logits < kth, -float("inf"))
    probs = torch.softmax(torch.log_softmax(logits, dim=-1), dim=-1)
    return torch.argmax(probs / noise, dim=-1, keepdim=True).to(dtype=torch.int)


class StaticFrameStep:
    """`FrameBatcher`'s frame step with fixed shapes and no host round trip: what a CUDA graph captures."""

    def __init__(self, batcher: FrameBatcher) -> None:
        self.batcher = batcher

    def __call__(self, inputs: StepInputs) -> torch.Tensor:
        """The next frame of every row: (rows, codebooks) codes."""
        batcher, model = self.batcher, self.batcher.model
        rows = inputs.rows
        text = torch.zeros((rows, 1), dtype=torch.long, device=inputs.frames.device)
        tokens = torch.cat([inputs.frames, text], dim=1)[:, None, :]
        mask = torch.cat([torch.ones_like(inputs.frames, dtype=torch.bool), text.bool()], dim=1)[:, None, :]
        embeds = model._embed_tokens(tokens)
        h = (embeds * mask.unsqueeze(-1)).sum(dim=2)
        h = batcher.backbone(h, inputs.slots, inputs.positions).to(dtype=batcher.dtype)
        last_h = h[:, -1, :]
        c0 = sample_rows(model.codebook0_head(last_h), inputs.temperature, inputs.top_k, inputs.noise[:, 0])
        curr_h = torch.cat([last_h.unsqueeze(1), model._embed_audio(0, c0)], dim=1)
        codes = [c0]
        decoder_rows = torch.arange(rows, device=h.device)
        curr_pos = torch.arange(curr_h.size(1), device=h.device)[None, :].repeat(rows, 1)
        decoder_temperature = torch.full_like(inputs.temperature, DECODER_TEMPERATURE)
        decoder_top_k = torch.full_like(inputs.top_k, DECODER_TOP_K)
        for i in range(1, batcher.codebooks):
            decoder_h = batcher.decoder(model.projection(curr_h), decoder_rows, curr_pos).to(dtype=batcher.dtype)
            ci_logits = torch.mm(decoder_h[:, -1, :], model.audio_head[i - 1])
            ci = sample_rows(ci_logits, decoder_temperature, decoder_top_k, inputs.noise[:, i])
            curr_h = model._embed_audio(i, ci)
            codes.append(ci)
            curr_pos = curr_pos[:, -1:] + 1
        return torch.cat(codes, dim=1)


class BucketedFrameStep:
    """`StaticFrameStep` on a batch padded to the next bucket size, run eagerly: the graphs' reference.

    The CPU runs this one (tests); `GraphedFrameStep` replays the same step, captured, on CUDA.
    """

    def __init__(self, batcher: FrameBatcher, buckets: Sequence[int]) -> None:
        if batcher.scratch_slot is None:
            raise ValueError("a fixed-shape step needs a FrameBatcher made with scratch_slot=True")
        self.batcher = batcher
        self.scratch_slot: int = batcher.scratch_slot
        self.step = StaticFrameStep(batcher)
        self.buckets = tuple(sorted(buckets))
        vocab = int(batcher.model.config.audio_vocab_size)
        self._inputs = {
            rows: StepInputs.allocate(rows, batcher.codebooks, vocab, batcher.dtype, batcher.device)
            for rows in self.buckets
        }
        for inputs in self._inputs.values():
            inputs.fill([], {}, self.scratch_slot)

    def __call__(self, streams: Sequence[_Stream], last_frames: dict[int, torch.Tensor]) -> torch.Tensor:
        """The next frame of each of `streams` (in order): (len(streams), codebooks) codes."""
        rows = next((size for size in self.buckets if size >= len(streams)), None)
        if rows is None:
            raise ValueError(f"{len(streams)} streams exceed the largest batch of {self.buckets[-1]}")
        self._inputs[rows].fill(streams, last_frames, self.scratch_slot)
        return self._run(rows)[: len(streams)].clone()

    def _run(self, rows: int) -> torch.Tensor:
        return self.step(self._inputs[rows])


class GraphedFrameStep(BucketedFrameStep):
    """`StaticFrameStep` captured as one CUDA graph per bucket size, replayed for each frame step.

    The graphs are captured at start-up, all in one memory pool, the largest first (as PyTorch's
    CUDA-graph notes advise). Capturing runs the step for real, every row in the scratch slot.
    """

    def __init__(self, batcher: FrameBatcher, buckets: Sequence[int], warmup_steps: int = 3) -> None:
        if batcher.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {batcher.device}")
        super().__init__(batcher, buckets)
        self._outputs: dict[int, torch.Tensor] = {}
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        device = batcher.device
        pool = None
        for rows in reversed(self.buckets):
            side = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(warmup_steps):  # lazy initialisation (cuBLAS handles, kernels) before capture
                    self.step(self._inputs[rows])
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool), torch.inference_mode():
                self._outputs[rows] = self.step(self._inputs[rows])
            pool = graph.pool()
            self._graphs[rows] = graph

    def _run(self, rows: int) -> torch.Tensor:
        self._graphs[rows].replay()
        return self._outputs[rows]
