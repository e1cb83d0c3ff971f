"""Many streams from one FireRedTTS2 copy (engines/fireredtts2_batch.py) against the package's own `generate_frame`.

Tiny random weights in float64, so that a batched matmul and a lone one agree to the last bits that
could move a sample: a stream must make exactly the codes it makes alone, and alone exactly the codes
upstream's loop makes under the same seed.
"""

from __future__ import annotations

import copy

import pytest
import torch

from parley_tts.engines.fireredtts2 import Model, ModelArgs
from parley_tts.engines.fireredtts2_batch import BatchFull, FrameBatcher, Sampling, SharedCopy
from services.tts.tests.tiny_fireredtts2 import AUDIO_VOCAB, CODEBOOKS, register_flavours

CONTEXT = 64  # the tiny backbone's max_seq_len
TEXT_VOCAB = 300


@pytest.fixture(scope="module")
def model() -> Model:
    from fireredtts2.llm.utils import init_weights

    backbone, decoder = register_flavours(CONTEXT)
    torch.manual_seed(0)
    args = ModelArgs(
        backbone_flavor=backbone,
        decoder_flavor=decoder,
        text_vocab_size=TEXT_VOCAB,
        audio_vocab_size=AUDIO_VOCAB,
        audio_num_codebooks=CODEBOOKS,
        decoder_loss_weight=0.6,
        use_text_loss=True,
    )
    return init_weights(Model(args)).double().eval()


def prompt(seed: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A prompt as the engine builds one: text frames (the last column), then audio frames (the codebooks)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.zeros((length, CODEBOOKS + 1), dtype=torch.long)
    mask = torch.zeros((length, CODEBOOKS + 1), dtype=torch.bool)
    text = length // 2
    tokens[:text, -1] = torch.randint(1, TEXT_VOCAB, (text,), generator=generator)
    mask[:text, -1] = True
    tokens[text:, :-1] = torch.randint(0, AUDIO_VOCAB, (length - text, CODEBOOKS), generator=generator)
    mask[text:, :-1] = True
    return tokens, mask


def upstream(model: Model, tokens: torch.Tensor, mask: torch.Tensor, frames: int, seed: int) -> torch.Tensor:
    """The package's own loop: `setup_caches(1)`, `generate_frame`, each frame fed back as audio."""
    model = copy.deepcopy(model)
    model.setup_caches(1)
    torch.manual_seed(seed)
    t, m, positions = tokens[None], mask[None], torch.arange(len(tokens))[None]
    made = []
    with torch.inference_mode():
        for _ in range(frames):
            frame = model.generate_frame(t, m, positions, 0.9, 30).long()
            made.append(frame[0])
            text = torch.zeros((1, 1), dtype=torch.long)
            t = torch.cat([frame, text], dim=1)[:, None]
            m = torch.cat([torch.ones_like(frame, dtype=torch.bool), text.bool()], dim=1)[:, None]
            positions = positions[:, -1:] + 1
    return torch.stack(made)


def alone(
    batcher: FrameBatcher, tokens: torch.Tensor, mask: torch.Tensor, frames: int, sampling: Sampling
) -> torch.Tensor:
    stream, frame = batcher.join(tokens, mask, sampling)
    made = [frame]
    for _ in range(frames - 1):
        frame = batcher.step({stream: frame})[stream]
        made.append(frame)
    batcher.leave(stream)
    return torch.stack(made).long()


def seeded(seed: int) -> Sampling:
    return Sampling(temperature=0.9, top_k=30, generator=torch.Generator().manual_seed(seed))


def test_a_lone_stream_makes_exactly_what_upstreams_generate_frame_makes(model: Model) -> None:
    tokens, mask = prompt(1, 12)
    expected = upstream(model, tokens, mask, 20, seed=7)
    torch.manual_seed(7)  # no generator of its own: the global one, drawn in upstream's order
    got = alone(FrameBatcher(copy.deepcopy(model), max_streams=4), tokens, mask, 20, Sampling(0.9, 30))
    assert torch.equal(got, expected)
    assert len({tuple(frame.tolist()) for frame in got}) > 10, "the frames must differ, or this proves little"


def test_each_stream_of_a_batch_makes_what_it_makes_alone_joining_and_leaving_midway(model: Model) -> None:
    prompts = {name: prompt(seed, length) for name, seed, length in (("a", 1, 12), ("b", 2, 7), ("c", 3, 20))}
    solo = FrameBatcher(copy.deepcopy(model), max_streams=1)
    expected = {name: alone(solo, *prompts[name], 16, seeded(i)) for i, name in enumerate(prompts)}

    batcher = FrameBatcher(copy.deepcopy(model), max_streams=3)
    joins = {"a": 0, "b": 3, "c": 5}  # the frame step at which each stream arrives
    made: dict[str, list[torch.Tensor]] = {name: [] for name in prompts}
    ids: dict[str, int] = {}
    last: dict[str, torch.Tensor] = {}
    for step in range(30):
        ongoing = {name: last[name] for name in ids if len(made[name]) < 16}
        if ongoing:
            for stream, frame in batcher.step({ids[name]: frame for name, frame in ongoing.items()}).items():
                name = next(n for n, i in ids.items() if i == stream)
                made[name].append(frame)
                last[name] = frame
        for name in [n for n in ids if len(made[n]) == 16 and n in last]:
            batcher.leave(ids[name])  # done: its slot is free for whoever comes next
            del last[name]
        for name, at in joins.items():
            if at == step:
                ids[name], frame = batcher.join(*prompts[name], seeded(list(prompts).index(name)))
                made[name].append(frame)
                last[name] = frame
    for name in prompts:
        assert torch.equal(torch.stack(made[name]).long(), expected[name]), name
    assert batcher.capacity == 3 and not batcher.streams


def test_a_cancelled_stream_leaves_the_others_undisturbed_and_its_slot_to_a_newcomer(model: Model) -> None:
    tokens, mask = prompt(4, 10)
    other_tokens, other_mask = prompt(5, 15)
    solo = FrameBatcher(copy.deepcopy(model), max_streams=1)
    expected = alone(solo, tokens, mask, 8, seeded(11))
    newcomer_expected = alone(solo, other_tokens, other_mask, 4, seeded(12))

    batcher = FrameBatcher(copy.deepcopy(model), max_streams=2)
    kept, frame = batcher.join(tokens, mask, seeded(11))
    cancelled, frame_c = batcher.join(other_tokens, other_mask, seeded(99))
    made = [frame]
    for _ in range(3):
        out = batcher.step({kept: frame, cancelled: frame_c})
        frame, frame_c = out[kept], out[cancelled]
        made.append(frame)
    batcher.leave(cancelled)  # barge-in: it goes mid-speech
    newcomer, _ = batcher.join(tokens, mask, seeded(0))  # the freed slot is taken at once
    with pytest.raises(BatchFull):
        batcher.join(tokens, mask, seeded(0))
    batcher.leave(newcomer)
    late, late_frame = batcher.join(other_tokens, other_mask, seeded(12))  # in the slot with stale keys
    late_made = [late_frame]
    for _ in range(4):
        out = batcher.step({kept: frame, late: late_frame} if len(late_made) < 4 else {kept: frame})
        frame = out[kept]
        made.append(frame)
        if late in out:
            late_frame = out[late]
            late_made.append(late_frame)
    assert torch.equal(torch.stack(made).long(), expected)
    assert torch.equal(torch.stack(late_made).long(), newcomer_expected)


def test_a_stream_is_refused_past_the_context(model: Model) -> None:
    batcher = FrameBatcher(copy.deepcopy(model), max_streams=1)
    with pytest.raises(ValueError, match="does not fit"):
        batcher.join(*prompt(6, CONTEXT), seeded(0))
    stream, frame = batcher.join(*prompt(6, CONTEXT - 2), seeded(0))
    for _ in range(2):  # positions CONTEXT - 2 and CONTEXT - 1: the last two places
        frame = batcher.step({stream: frame})[stream]
    with pytest.raises(ValueError, match="used its context"):
        batcher.step({stream: frame})


def test_a_shared_copy_fails_only_the_stream_that_ran_out_of_context(model: Model) -> None:
    shared = SharedCopy(copy.deepcopy(model), max_streams=2)
    full, frame_full = shared.join(*prompt(7, CONTEXT - 1), seeded(0))  # one place left
    other, frame_other = shared.join(*prompt(8, 10), seeded(1))
    frame_full = shared.next_frame(full, frame_full)  # the last place
    with pytest.raises(ValueError, match="used its context"):
        shared.next_frame(full, frame_full)
    assert shared.next_frame(other, frame_other).shape == (CODEBOOKS,)  # the other goes on
    shared.leave(full)
    shared.leave(other)
    assert shared.batcher.capacity == 2
