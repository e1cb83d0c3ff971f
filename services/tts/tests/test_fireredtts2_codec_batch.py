"""The codec's batched streaming decode (engines/fireredtts2_codec_batch.py) against upstream's `decode_one_token`.

Tiny random codec weights in float64 (the RVQ lookup summed in float64 too: the package's own
`decode_codes` is fixed to float32): each stream's audio, decoded in a batch whose members come and go,
must be what upstream's per-stream loop makes for that stream alone. Exact equality is not promised: a
batched matmul may round differently from a lone one, and the attention over a masked slot cache sums
its softmax over more (masked, zero) terms than upstream's over its exact cache. In float64 these stay
at a few ulps of the samples (observed: at most 5e-16 on samples of about 0.17), while a mix-up of
streams, positions or state moves samples by 1e-3 or more: `TOLERANCE` sits well between the two.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from parley_tts.engines.fireredtts2 import RedCodecInfer, build_codec
from parley_tts.engines.fireredtts2_codec_batch import FIRST_KV_CAPACITY, LATENTS_PER_FRAME, CodecSlots
from services.tts.tests.tiny_fireredtts2 import (
    AUDIO_VOCAB,
    CODEBOOKS,
    CODEC_SECTIONS,
    decode_codes_in_float64,
)

TOLERANCE = 1e-12
FRAME_SAMPLES = 1920


@pytest.fixture(scope="module")
def codec() -> Iterator[RedCodecInfer]:
    from fireredtts2.codec.rvq import ResidualVQ

    torch.manual_seed(0)
    sections = {**CODEC_SECTIONS, "acoustic_decoder": {**CODEC_SECTIONS["acoustic_decoder"], "num_layers": 2}}
    model = build_codec(sections)
    with torch.no_grad():
        for quantizer in model.rvq.quantizers:
            quantizer.codebook.normal_()
        # Upstream initialises the decoder's convolutions with std 0.02 and zero biases: livelier weights
        # here, so that any wrong piece of state shows plainly in the audio.
        for parameter in model.acoustic_decoder.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    patch = pytest.MonkeyPatch()
    patch.setattr(ResidualVQ, "decode_codes", decode_codes_in_float64)
    yield RedCodecInfer(model).double().eval()
    patch.undo()


def codes(seed: int, frames: int) -> torch.Tensor:
    return torch.randint(0, AUDIO_VOCAB, (frames, CODEBOOKS), generator=torch.Generator().manual_seed(seed))


def upstream(codec: RedCodecInfer, frames: torch.Tensor, ends: bool = True) -> list[torch.Tensor]:
    """The package's own loop: one `decode_one_token` per frame, the caches carried along, the last flagged."""
    cache: dict[str, torch.Tensor] = {}
    audio = []
    for i, frame in enumerate(frames):
        chunk, cache = codec.decode_one_token(frame[None, :, None], cache, last_token=ends and i == len(frames) - 1)
        audio.append(chunk[0])
    return audio


def assert_close(got: list[torch.Tensor], expected: list[torch.Tensor], name: str) -> None:
    assert len(got) == len(expected), name
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a.shape == b.shape, f"{name} frame {i}: {a.shape} != {b.shape}"
        assert torch.allclose(a, b, rtol=0, atol=TOLERANCE), f"{name} frame {i}: off by {(a - b).abs().max():.3g}"


def test_a_lone_stream_decodes_what_upstream_decodes(codec: RedCodecInfer) -> None:
    frames = codes(1, 10)
    expected = upstream(codec, frames)
    slots = CodecSlots(codec, slots=3)
    slots.start(2)
    got = [slots.decode({2: (frame, i == len(frames) - 1)})[2] for i, frame in enumerate(frames)]
    assert_close(got, expected, "alone")
    assert got[0].numel() == FRAME_SAMPLES - 360 and got[-1].numel() == FRAME_SAMPLES + 360
    assert expected[0].abs().max() > 1e-3, "silence would prove little"


def test_streams_joining_and_leaving_midway_each_decode_what_they_decode_alone(codec: RedCodecInfer) -> None:
    lengths = {"a": 12, "b": 7, "c": 9, "d": 6}
    streams = {name: codes(seed, n) for seed, (name, n) in enumerate(lengths.items())}
    expected = {name: upstream(codec, frames) for name, frames in streams.items()}

    slots = CodecSlots(codec, slots=3)
    arrivals = {"a": 0, "b": 2, "c": 3, "d": 10}  # "d" comes after "b" left: into its slot, stale state and all
    free = [2, 1, 0]
    slot_of: dict[str, int] = {}  # the streams decoding now
    used: dict[str, int] = {}  # every stream's slot
    made: dict[str, list[torch.Tensor]] = {name: [] for name in streams}
    for step in range(20):
        for name, at in arrivals.items():
            if at == step:
                slot_of[name] = used[name] = free.pop()
                slots.start(slot_of[name])
        batch = {}
        for name, slot in slot_of.items():
            done = len(made[name])
            if done < lengths[name]:
                batch[slot] = (streams[name][done], done == lengths[name] - 1)
        audio = slots.decode(batch)
        for name, slot in list(slot_of.items()):
            if slot in audio:
                made[name].append(audio[slot])
            if len(made[name]) == lengths[name]:
                slots.finish(slot)
                free.append(slot)
                del slot_of[name]
    assert used["d"] == used["b"], "the newcomer must reuse a freed slot"
    for name in streams:
        assert_close(made[name], expected[name], name)


def test_a_stream_cut_short_leaves_the_others_undisturbed(codec: RedCodecInfer) -> None:
    kept, cut = codes(7, 8), codes(8, 8)
    expected = upstream(codec, kept)
    newcomer_expected = upstream(codec, cut[:3])
    slots = CodecSlots(codec, slots=2)
    slots.start(0)
    slots.start(1)
    made = []
    for i in range(4):
        out = slots.decode({0: (kept[i], False), 1: (cut[i], False)})
        made.append(out[0])
    slots.finish(1)  # barge-in: gone mid-speech, its last frame never flagged
    slots.start(1)
    newcomer = []
    for i in range(4, 8):
        batch = {0: (kept[i], i == 7)}
        if len(newcomer) < 3:
            batch[1] = (cut[len(newcomer)], len(newcomer) == 2)
        out = slots.decode(batch)
        made.append(out[0])
        if 1 in out:
            newcomer.append(out[1])
    assert_close(made, expected, "kept")
    assert_close(newcomer, newcomer_expected, "newcomer")
    slots.finish(1)
    with pytest.raises(KeyError, match="holds no stream"):  # a finished slot decodes nothing until started
        slots.decode({1: (cut[0], False)})


def test_the_attention_caches_grow_past_their_first_capacity(codec: RedCodecInfer) -> None:
    frames = codes(9, FIRST_KV_CAPACITY // LATENTS_PER_FRAME + 3)
    expected = upstream(codec, frames, ends=False)
    slots = CodecSlots(codec, slots=2)
    slots.start(1)
    got = [slots.decode({1: (frame, False)})[1] for frame in frames]
    assert slots.capacity == 2 * FIRST_KV_CAPACITY
    assert_close(got[-4:], expected[-4:], "past the first capacity")
