"""The fixed-shape frame step that CUDA graphs capture (engines/fireredtts2_graphs.py), checked on the CPU.

No GPU is needed: the graphs replay `StaticFrameStep` on padded inputs, and that step, run eagerly
through `BucketedFrameStep`, must make exactly the frames of the eager `FrameBatcher` step, padding
rows, idle streams and per-row sampling included. Only the capture itself needs CUDA.
"""

from __future__ import annotations

import copy

import pytest
import torch

from parley_tts.engines.fireredtts2 import Model
from parley_tts.engines.fireredtts2_batch import FrameBatcher, Sampling, _sample
from parley_tts.engines.fireredtts2_graphs import BucketedFrameStep, GraphedFrameStep, batch_buckets, sample_rows
from services.tts.tests import test_fireredtts2_batch as batch_tests
from services.tts.tests.tiny_fireredtts2 import AUDIO_VOCAB

model = batch_tests.model  # the same tiny float64 weights, built once per module
prompt = batch_tests.prompt


def test_buckets_are_powers_of_two_and_the_copys_streams() -> None:
    assert batch_buckets(1) == (1,)
    assert batch_buckets(6) == (1, 2, 4, 6)
    assert batch_buckets(8) == (1, 2, 4, 8)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_rows_sample_as_upstreams_sample_topk_does_one_at_a_time(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    logits = (torch.randn(5, AUDIO_VOCAB) * 4).to(dtype)
    settings = [(0.9, 30), (0.75, 10), (1.3, 1), (0.5, AUDIO_VOCAB), (1.0, 2)]
    noise_generator = torch.Generator().manual_seed(3)
    noise = torch.empty((5, AUDIO_VOCAB), dtype=dtype).exponential_(1, generator=noise_generator)
    replay = torch.Generator().manual_seed(3)
    expected = torch.cat([_sample(logits[i : i + 1], k, t, replay) for i, (t, k) in enumerate(settings)])
    computation = torch.promote_types(dtype, torch.float32)
    temperature = torch.tensor([[t] for t, _ in settings], dtype=computation)
    top_k = torch.tensor([[k] for _, k in settings])
    assert torch.equal(sample_rows(logits, temperature, top_k, noise), expected)


def seeded(seed: int) -> Sampling:
    return Sampling(temperature=0.8 + seed / 10, top_k=20 + seed, generator=torch.Generator().manual_seed(seed))


def run(
    batcher: FrameBatcher, schedule: list[set[str]], prompts: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """At each step, the named streams already in make a frame and the others join; each leaves after its last."""
    last_step = {name: max(i for i, asked in enumerate(schedule) if name in asked) for name in prompts}
    made: dict[str, list[torch.Tensor]] = {}
    ids: dict[str, int] = {}
    for index, asked in enumerate(schedule):
        stepping = {ids[name]: made[name][-1] for name in sorted(asked & ids.keys())}
        for stream, frame in (batcher.step(stepping) if stepping else {}).items():
            made[next(name for name, i in ids.items() if i == stream)].append(frame)
        for name in sorted(asked - ids.keys()):
            ids[name], frame = batcher.join(*prompts[name], seeded(sorted(prompts).index(name)))
            made[name] = [frame]
        for name in [name for name in ids if last_step[name] == index]:
            batcher.leave(ids.pop(name))
    return {name: torch.stack(frames).long() for name, frames in made.items()}


def test_the_bucketed_step_makes_exactly_the_eager_steps_frames(model: Model) -> None:
    prompts = {name: prompt(seed, 7 + 3 * seed) for seed, name in enumerate("abcde", start=1)}
    # Buckets of 1, 2 and 4 rows: three streams step padded to four while "a" sits out (steps 3-5)
    # in a slot of its own, which the padding row must not touch. "c" leaves after step 5 and "e"
    # takes its slot, stale keys and all.
    schedule = [
        {"a"},
        {"a", "b"},
        {"a", "b", "c"},
        {"b", "c"},
        {"b", "c", "d"},
        {"b", "c", "d"},
        {"a", "b", "d"},
        {"a", "e"},
        {"a", "d", "e"},
        {"e"},
    ]
    expected = run(FrameBatcher(copy.deepcopy(model), max_streams=4), schedule, prompts)

    batcher = FrameBatcher(copy.deepcopy(model), max_streams=4, scratch_slot=True)
    batcher.fast_step = BucketedFrameStep(batcher, batch_buckets(4))
    got = run(batcher, schedule, prompts)
    for name in prompts:
        assert torch.equal(got[name], expected[name]), name
    assert len({tuple(frame.tolist()) for frame in got["a"]}) > 4, "the frames must differ, or this proves little"
    assert batcher.capacity == 4 and not batcher.streams


def test_a_fixed_shape_step_needs_a_scratch_slot_and_graphs_a_gpu(model: Model) -> None:
    with pytest.raises(ValueError, match="scratch_slot"):
        BucketedFrameStep(FrameBatcher(copy.deepcopy(model), max_streams=2), (1, 2))
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedFrameStep(FrameBatcher(copy.deepcopy(model), max_streams=2, scratch_slot=True), (1, 2))
