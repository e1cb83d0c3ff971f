"""The FireRedTTS2 codec's streaming decode for many streams at once: one batched pass a frame.

Upstream decodes a stream's audio one frame at a time (`RedCodecInfer.decode_one_token`), carrying its
state between calls in a dict of tensors that grow (the attention's keys and values) or slide (the
convolutions' left context, the inverse STFT's overlap). Streams sharing a model copy would each pay a
pass of small kernels a frame. Here every piece of that state gets a slot per stream, preallocated, so
one pass decodes a frame for every stream that has one, each row with its own history:

- the RVQ lookup and `UpConv` (4 latents a frame) keep no state: they run batched as they are;
- the upsampling transposed convolutions (1 + 2 frames of left context), the backbone's causal
  input convolution (6 frames) and its four causal resnet blocks (2 + 2 frames each) keep their left
  context per slot, zero for a new stream: upstream's first call has no context, and a zero context
  adds exact zeros, so the first frame comes out the same;
- each transformer layer's keys and values sit in a slot cache, each row written at its own position
  (8 latents a frame) and attending, through a mask, to its own past only; stale entries of a slot's
  previous stream lie beyond its position, where the mask hides them. Upstream's chunk attends to all
  of its past and to itself without a mask, which is what the mask gives each row;
- the inverse STFT keeps the last 3 windowed frames per slot; a stream's first frame has none, and
  upstream then normalises by the window envelope of the new frames alone and emits 360 samples fewer
  (`ISTFT.forward_chunk` with `cache=None`): a per-row flag does the same from a zero overlap.

The package's own modules do the maths (`forward_upsample_conv_chunk`, the blocks' `forward_chunk`, the
attention's projections, the head's output layer); only the attention over the slot caches and the
inverse STFT's overlap-add are written here, after upstream's. A row's audio is what upstream's loop
makes for that stream alone up to the rounding of a batched matmul (bit for bit in practice on CPU for
the convolutions; see the tests for the float64 bound).

Not thread-safe: the model copy's codec lock serialises its users (`SharedCopy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.nn import functional

if TYPE_CHECKING:
    from fireredtts2.codec.decoder import AcousticDecoder, CausalVocosBackbone
    from fireredtts2.codec.model import RedCodecInfer
    from fireredtts2.codec.whisper import WhisperEncoderLayer

LATENTS_PER_FRAME = 8  # 12.5 Hz frames -> 50 Hz (UpConv) -> 100 Hz (the decoder's upsampling)
FIRST_KV_CAPACITY = 64 * LATENTS_PER_FRAME  # the caches grow by doubling: memory follows the longest stream


class CodecSlots:
    """Streaming codec decode for up to `slots` streams, each in its own slot of preallocated state."""

    def __init__(self, codec: RedCodecInfer, slots: int) -> None:
        decoder: AcousticDecoder = codec.acoustic_decoder
        if not decoder.causal:
            raise ValueError("streaming decode needs the codec's causal acoustic decoder")
        self.codec = codec
        self.decoder = decoder
        self.backbone: CausalVocosBackbone = decoder.backbone
        parameter = next(decoder.parameters())
        self.dtype, self.device = parameter.dtype, parameter.device
        dim: int = decoder.embed_dim
        self.slots = slots

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros((slots, *shape), dtype=self.dtype, device=self.device)

        # Left contexts, laid out as upstream's caches (so its chunk functions take them as they are).
        self.upsample_context = zeros(dim, 3)  # 1 frame for the first transposed conv, 2 for the second
        self.in_proj_context = zeros(dim, self.backbone.in_proj.causal_padding[0])
        blocks = [*self.backbone.prior_net, *self.backbone.post_net]
        self.block_contexts = [zeros(block.in_channels + block.out_channels, 2) for block in blocks]
        istft = decoder.isift.istft
        self.overlap = zeros(istft.n_fft, istft.win_length // istft.hop_length - 1)
        # Kept on the host, so that a pass never waits on the device to size or slice anything.
        self.started = [False] * slots  # whether the slot's stream has its ISTFT overlap yet
        self.lengths = [0] * slots  # latents in the slot's keys and values: where its next ones go
        # Keys and values per layer: (slots, heads, capacity, head_dim).
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        for layer in self.backbone.transformers:
            attention = layer.self_attn
            self.keys.append(zeros(attention.num_heads, FIRST_KV_CAPACITY, attention.head_dim))
            self.values.append(zeros(attention.num_heads, FIRST_KV_CAPACITY, attention.head_dim))
        self.active: set[int] = set()

    @property
    def capacity(self) -> int:
        """Latents a slot's keys and values have room for now (they grow as needed)."""
        return self.keys[0].shape[2] if self.keys else 0

    def start(self, slot: int) -> None:
        """A new stream in `slot`: no left context, no overlap, no past (whatever a previous stream left)."""
        if not 0 <= slot < self.slots:
            raise IndexError(f"slot {slot} is not one of the {self.slots}")
        for context in (self.upsample_context, self.in_proj_context, self.overlap, *self.block_contexts):
            context[slot] = 0
        self.started[slot] = False
        self.lengths[slot] = 0
        self.active.add(slot)

    def finish(self, slot: int) -> None:
        """The stream in `slot` ended: the slot may take the next one."""
        self.active.discard(slot)

    @torch.inference_mode()
    def decode(self, frames: dict[int, tuple[torch.Tensor, bool]]) -> dict[int, torch.Tensor]:
        """One frame's audio for each slot in `frames` (slot -> its 16 codes and whether it is the stream's
        last frame, which emits the final overlap): slot -> 1-D samples, as `decode_one_token` makes them."""
        if not frames:
            return {}
        for slot in frames:
            if slot not in self.active:
                raise KeyError(f"codec slot {slot} holds no stream")
        order = list(frames)
        slots = torch.tensor(order, device=self.device)
        codes = torch.stack([frames[s][0].to(self.device).long() for s in order])  # (b, nq)
        last = [frames[s][1] for s in order]

        features = self.codec.rvq.decode_codes(codes.T[:, :, None])  # (b, dim, 1)
        features = features.transpose(1, 2).to(self.dtype)
        features, _ = self.codec.upsample(features, torch.ones(len(order), dtype=torch.long, device=self.device))
        x, self.upsample_context[slots] = self.decoder.forward_upsample_conv_chunk(
            features.transpose(1, 2), self.upsample_context[slots]
        )  # (b, dim, 8)
        starts = [self.lengths[s] for s in order]
        x = self._backbone(x, slots, starts)
        samples = self._istft(x, slots, [not self.started[s] for s in order], last)
        for slot in order:
            self.lengths[slot] += x.shape[1]
            self.started[slot] = True
        return dict(zip(order, samples, strict=True))

    def _backbone(self, x: torch.Tensor, slots: torch.Tensor, starts: list[int]) -> torch.Tensor:
        """`CausalVocosBackbone.forward_chunk` with each row's state in its slot, its latents written from
        `starts`: (b, dim, t) -> (b, t, dim)."""
        backbone = self.backbone
        x, self.in_proj_context[slots] = backbone.in_proj.forward_chunk(x, self.in_proj_context[slots])
        blocks = [*backbone.prior_net, *backbone.post_net]
        prior = len(backbone.prior_net)
        for block, context in zip(blocks[:prior], self.block_contexts[:prior], strict=True):
            x, context[slots] = block.forward_chunk(x, context[slots])
        x = x.transpose(1, 2)
        seen = max(starts) + x.shape[1]  # the longest row's past and present: the rest is nobody's
        self._reserve(seen)
        begin = torch.tensor(starts, device=self.device)
        positions = begin[:, None] + torch.arange(x.shape[1], device=self.device)[None, :]  # (b, t)
        visible = torch.arange(seen, device=self.device)[None, :] < (begin + x.shape[1])[:, None]  # (b, seen)
        for index, layer in enumerate(backbone.transformers):
            x = self._layer(layer, index, x, slots, positions, visible)
        x = x.transpose(1, 2)
        for block, context in zip(blocks[prior:], self.block_contexts[prior:], strict=True):
            x, context[slots] = block.forward_chunk(x, context[slots])
        out: torch.Tensor = backbone.final_norm(x.transpose(1, 2))
        return out

    def _reserve(self, latents: int) -> None:
        """Room for `latents` keys and values in every slot: double the caches until there is."""
        capacity = self.capacity
        if latents <= capacity:
            return
        while capacity < latents:
            capacity *= 2
        for caches in (self.keys, self.values):
            for index, cache in enumerate(caches):
                grown = cache.new_zeros((*cache.shape[:2], capacity, cache.shape[3]))
                grown[:, :, : cache.shape[2]] = cache
                caches[index] = grown

    def _layer(
        self,
        layer: WhisperEncoderLayer,
        index: int,
        x: torch.Tensor,
        slots: torch.Tensor,
        positions: torch.Tensor,
        visible: torch.Tensor,
    ) -> torch.Tensor:
        """`WhisperEncoderLayer.forward_chunk` (eval: no dropout) over the slot caches: (b, t, dim), the rows'
        latents written at `positions` (b, t), each attending to the `visible` (b, seen) part of its slot."""
        attention = layer.self_attn
        rows, new, _ = x.shape
        residual = x
        h = layer.self_attn_layer_norm(x)
        query = attention._shape(attention.q_proj(h), new, rows)  # (b, heads, t, head_dim)
        key = attention._shape(attention.k_proj(h), new, rows)
        value = attention._shape(attention.v_proj(h), new, rows)
        keys, values = self.keys[index], self.values[index]
        keys[slots[:, None], :, positions] = key.transpose(1, 2)  # the written tensor is (b, t, heads, hd)
        values[slots[:, None], :, positions] = value.transpose(1, 2)
        seen = visible.shape[1]
        h = functional.scaled_dot_product_attention(
            query, keys[slots, :, :seen], values[slots, :, :seen], attn_mask=visible[:, None, None, :]
        )
        h = attention.out_proj(h.transpose(1, 2).reshape(rows, new, attention.embed_dim))
        x = residual + h
        residual = x
        h = layer.fc2(functional.gelu(layer.fc1(layer.final_layer_norm(x))))
        out: torch.Tensor = residual + h
        return out

    def _istft(self, x: torch.Tensor, slots: torch.Tensor, fresh: list[bool], last: list[bool]) -> list[torch.Tensor]:
        """`ISTFTHead.forward_chunk` per row, batched: each row's samples (their counts differ on a
        stream's first and last frame)."""
        head = self.decoder.isift
        istft = head.istft
        hop, window_length = istft.hop_length, istft.win_length
        pad = (window_length - hop) // 2
        spectrum = head.out(x).transpose(1, 2)
        magnitude, phase = spectrum.chunk(2, dim=1)
        magnitude = torch.clip(torch.exp(magnitude), max=1e2)
        complex_spectrum = magnitude * (torch.cos(phase) + 1j * torch.sin(phase))
        window: torch.Tensor = istft.window
        ifft = torch.fft.irfft(complex_spectrum, istft.n_fft, dim=1, norm="backward") * window[None, :, None]
        frames = ifft.shape[-1]
        ifft = torch.cat([self.overlap[slots], ifft], dim=-1)  # a new stream's overlap is zero
        kept = self.overlap.shape[-1]
        self.overlap[slots] = ifft[..., -kept:]
        size = (ifft.shape[-1] - 1) * hop + window_length

        def overlap_add(columns: torch.Tensor, length: int) -> torch.Tensor:
            return functional.fold(columns, output_size=(1, length), kernel_size=(1, window_length), stride=(1, hop))

        y = overlap_add(ifft, size)[:, 0, 0, :]
        squared = window.square()
        envelope = overlap_add(squared.expand(1, frames + kept, -1).transpose(1, 2), size).reshape(-1)
        # Upstream's first frame is normalised by the envelope of its own windows only; placed after the
        # zero overlap it lines up with the rows that have one (the ones before it are cut off below).
        first_size = (frames - 1) * hop + window_length
        first_envelope = overlap_add(squared.expand(1, frames, -1).transpose(1, 2), first_size).reshape(-1)
        first_envelope = torch.cat([first_envelope.new_ones(size - first_size), first_envelope])
        is_first = torch.tensor(fresh, device=self.device)[:, None]
        y = y / torch.where(is_first, first_envelope[None, :], envelope[None, :])
        out = []
        for row, (is_fresh, is_last) in enumerate(zip(fresh, last, strict=True)):
            begin = window_length - hop + (pad if is_fresh else 0)
            end = size - (pad if is_last else window_length - hop)
            out.append(y[row, begin:end])
        return out
