"""Concurrent FireRedTTS2 streams on one machine: one batched model copy against one copy per stream.

A CPU proxy for the GPU question (docs/benchmarks.md): a mid-size random-weight model of FireRedTTS2's
shape (16 codebooks, audio vocabulary 2051, a qwen2 backbone and decoder, by default 4 layers of width
512 and 2 of width 256). For N concurrent streams it measures, over the same frames:

- per copy: N model copies, each running upstream's own loop (`Model.generate_frame`, batch-1 cache)
  in its own thread, as the TTS service runs N copies today;
- batched: one copy serving all N through `FrameBatcher` (engines/fireredtts2_batch.py), one
  batched backbone step and 15 batched decoder passes a frame.

Each frame is 80 ms of audio: a per-stream real-time factor (RTF) is seconds per frame / 0.08, and
under 1 a stream plays without stalling. The codec's decode is not part of either (it is the same
per-stream work in both).

    python bench/fireredtts2_streams.py                       # 1, 2, 4, 8 streams, 3 runs each
    python bench/fireredtts2_streams.py --streams 1 4 --runs 5 --layers 8 --width 1024
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import platform
import statistics
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

# Imported for its side effect: the package's model code becomes importable without torchaudio.
import parley_tts.engines.fireredtts2  # noqa: F401
from parley_tts.engines.fireredtts2_batch import FrameBatcher, Sampling

if TYPE_CHECKING:
    from fireredtts2.llm.llm import Model

CODEBOOKS = 16
AUDIO_VOCAB = 2051
TEXT_VOCAB = 4096
FRAME_S = 0.08


def build_model(layers: int, width: int, context: int, seed: int = 0) -> Model:
    from fireredtts2.llm.llm import Model, ModelArgs
    from fireredtts2.llm.modules import FLAVORS
    from fireredtts2.llm.utils import init_weights
    from torchtune.models.qwen2 import qwen2

    FLAVORS["bench-backbone"] = lambda: qwen2(
        vocab_size=8,
        num_layers=layers,
        num_heads=width // 64,
        num_kv_heads=max(1, width // 256),
        embed_dim=width,
        intermediate_dim=width * 3,
        max_seq_len=context,
        norm_eps=1e-6,
    )
    FLAVORS["bench-decoder"] = lambda: qwen2(
        vocab_size=8,
        num_layers=max(1, layers // 2),
        num_heads=max(1, width // 128),
        num_kv_heads=1,
        embed_dim=width // 2,
        intermediate_dim=width * 3 // 2,
        max_seq_len=CODEBOOKS,
        norm_eps=1e-6,
    )
    torch.manual_seed(seed)
    args = ModelArgs(
        backbone_flavor="bench-backbone",
        decoder_flavor="bench-decoder",
        text_vocab_size=TEXT_VOCAB,
        audio_vocab_size=AUDIO_VOCAB,
        audio_num_codebooks=CODEBOOKS,
        decoder_loss_weight=0.6,
        use_text_loss=True,
    )
    model: Model = init_weights(Model(args)).eval()
    return model


def prompt(length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Text frames then audio frames, as a cloned voice's prompt is laid out."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.zeros((length, CODEBOOKS + 1), dtype=torch.long)
    mask = torch.zeros((length, CODEBOOKS + 1), dtype=torch.bool)
    text = length // 3
    tokens[:text, -1] = torch.randint(1, TEXT_VOCAB, (text,), generator=generator)
    mask[:text, -1] = True
    tokens[text:, :-1] = torch.randint(0, AUDIO_VOCAB, (length - text, CODEBOOKS), generator=generator)
    mask[text:, :-1] = True
    return tokens, mask


def one_copy_per_stream(copies: list[Model], prompt_frames: int, frames: int) -> tuple[float, float]:
    """N threads, each its own copy running upstream's loop: (wall seconds, mean first-frame seconds)."""
    firsts: list[float] = []
    start = threading.Barrier(len(copies) + 1)

    def run(model: Model, seed: int) -> None:
        tokens, mask = prompt(prompt_frames, seed)
        model.reset_caches()
        t, m, positions = tokens[None], mask[None], torch.arange(prompt_frames)[None]
        start.wait()
        began = time.perf_counter()
        with torch.inference_mode():
            for index in range(frames):
                frame = model.generate_frame(t, m, positions, 0.9, 30).long()
                if index == 0:
                    firsts.append(time.perf_counter() - began)
                text = torch.zeros((1, 1), dtype=torch.long)
                t = torch.cat([frame, text], dim=1)[:, None]
                m = torch.cat([torch.ones_like(frame, dtype=torch.bool), text.bool()], dim=1)[:, None]
                positions = positions[:, -1:] + 1

    threads = [threading.Thread(target=run, args=(model, i)) for i, model in enumerate(copies)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began, statistics.mean(firsts)


def batched(batcher: FrameBatcher, streams: int, prompt_frames: int, frames: int) -> tuple[float, float]:
    """All streams on one copy: each joins (its prefill), then one step a frame for all: (wall s, mean first s)."""
    began = time.perf_counter()
    last: dict[int, torch.Tensor] = {}
    firsts = []
    for seed in range(streams):
        stream, frame = batcher.join(
            *prompt(prompt_frames, seed), Sampling(0.9, 30, torch.Generator().manual_seed(seed))
        )
        last[stream] = frame
        firsts.append(time.perf_counter() - began)
    for _ in range(frames - 1):
        last = batcher.step(last)
    wall = time.perf_counter() - began
    for stream in list(last):
        batcher.leave(stream)
    return wall, statistics.mean(firsts)


def measure(runs: int, run: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    results = [run() for _ in range(runs)]
    return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--frames", type=int, default=25, help="frames per stream (80 ms each)")
    parser.add_argument("--prompt-frames", type=int, default=60, help="prompt length (text + a voice's codes)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--context", type=int, default=256)
    args = parser.parse_args()

    model = build_model(args.layers, args.width, args.context)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: {params:.0f} M parameters; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("streams | per copy: agg frames/s, RTF/stream, first frame | batched: agg frames/s, RTF/stream, first frame")
    rows = []
    for streams in args.streams:
        copies = [copy.deepcopy(model) for _ in range(streams)]
        for each in copies:
            each.setup_caches(1)
        per_copy = measure(args.runs, functools.partial(one_copy_per_stream, copies, args.prompt_frames, args.frames))
        batcher = FrameBatcher(copy.deepcopy(model), max_streams=streams)
        together = measure(args.runs, functools.partial(batched, batcher, streams, args.prompt_frames, args.frames))
        row: dict[str, Any] = {"streams": streams}
        for name, (wall, first) in (("per_copy", per_copy), ("batched", together)):
            row[name] = {
                "frames_per_s": round(streams * args.frames / wall, 1),
                "rtf_per_stream": round(wall / args.frames / FRAME_S, 3),
                "first_frame_ms": round(first * 1000, 1),
            }
        rows.append(row)
        p, b = row["per_copy"], row["batched"]
        print(
            f"{streams:7d} | {p['frames_per_s']:8.1f} {p['rtf_per_stream']:8.3f} {p['first_frame_ms']:8.1f} ms"
            f" | {b['frames_per_s']:8.1f} {b['rtf_per_stream']:8.3f} {b['first_frame_ms']:8.1f} ms",
            flush=True,
        )
    print(json.dumps({"machine": platform.processor() or platform.machine(), "args": vars(args), "rows": rows}))


if __name__ == "__main__":
    main()
