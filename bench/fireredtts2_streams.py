"""Concurrent FireRedTTS2 streams on one machine: one batched model copy against one copy per stream.

A CPU proxy for the GPU question (docs/benchmarks.md): a mid-size random-weight model of FireRedTTS2's
shape (16 codebooks, audio vocabulary 2051, a qwen2 backbone and decoder, by default 4 layers of width
512 and 2 of width 256). For N concurrent streams it measures, over the same frames:

- per copy: N model copies, each running upstream's own loop (`Model.generate_frame`, batch-1 cache)
  in its own thread, as the TTS service runs N copies today;
- batched: one copy serving all N through `FrameBatcher` (engines/fireredtts2_batch.py), one
  batched backbone step and 15 batched decoder passes a frame.

Each frame is 80 ms of audio: a per-stream real-time factor (RTF) is seconds per frame / 0.08, and
under 1 a stream plays without stalling. By default the codec's decode is not part of either.

With `--codec`, every frame is also decoded to audio by a codec of FireRedTTS2's codec's shape (RVQ of
16 codebooks of 2048, `UpConv`, the causal acoustic decoder: by default width 512, 4 transformer
layers, the real 240-sample hop, random weights), and three ways are compared:

- per copy: as above, each copy's thread also running upstream's `decode_one_token` on its own codec;
- batched, codec per stream: one copy's batched step, then each stream's `decode_one_token` in turn
  (a shared copy before the codec was batched);
- batched, codec batched: one batched step, then one batched codec pass for all streams
  (`CodecSlots`, engines/fireredtts2_codec_batch.py), as a shared copy runs now.

"First" is then a stream's first audio (its first frame made and decoded), else its first frame. The
three ways take turns run by run (medians of `--runs`), so that other load on the machine falls on all.

    python bench/fireredtts2_streams.py                       # 1, 2, 4, 8 streams, 3 runs each
    python bench/fireredtts2_streams.py --codec --runs 3      # the codec included
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

# Importing the engine makes the package's model code importable without torchaudio.
from parley_tts.engines.fireredtts2 import build_codec
from parley_tts.engines.fireredtts2_batch import FrameBatcher, Sampling
from parley_tts.engines.fireredtts2_codec_batch import CodecSlots

if TYPE_CHECKING:
    from fireredtts2.codec.model import RedCodecInfer
    from fireredtts2.llm.llm import Model

CODEBOOKS = 16
AUDIO_VOCAB = 2051
TEXT_VOCAB = 4096
FRAME_S = 0.08
CODEC_CODEBOOK = 2048  # the codec's codes: the LLM's vocabulary less its 3 special codes


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


def build_streaming_codec(width: int, layers: int, seed: int = 0) -> RedCodecInfer:
    """A codec of FireRedTTS2's codec's shape for decoding (its encoders tiny: decoding never runs them)."""
    from fireredtts2.codec.model import RedCodecInfer

    encoder = {"embed_dim": 64, "num_layers": 1, "num_heads": 2, "ffn_dim": 128}
    adaptor = {"in_dim": 64, "embed_dim": 64, "out_dim": 64, "num_layers": 1, "num_heads": 2, "ffn_dim": 128}
    sections = {
        "ssl": encoder,
        "ssl_adaptor": adaptor,
        "acoustic_encoder": encoder,
        "downsample": {"embed_dim": 128, "avg_pooler": 4},
        "rvq": {
            "input_dim": 128,
            "rvq_dim": width,
            "output_dim": width,
            "num_quantizers": CODEBOOKS,
            "codebook_size": CODEC_CODEBOOK,
            "codebook_dim": 16,
        },
        "upsample": {"embed_dim": width, "stride": 4},
        "semantic_decoder": adaptor,
        "acoustic_decoder": {
            "embed_dim": width,
            "num_layers": layers,
            "num_heads": max(1, width // 64),
            "hop_length": 240,
            "causal": True,
        },
    }
    torch.manual_seed(seed)
    codec = build_codec(sections)
    with torch.no_grad():
        for quantizer in codec.rvq.quantizers:
            quantizer.codebook.normal_()
    return RedCodecInfer(codec).eval()


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


def audible(frame: torch.Tensor) -> torch.Tensor:
    """A frame as the engine hands it to the codec: (1, 16, 1), clamped into the codebooks."""
    return frame.clamp(max=CODEC_CODEBOOK - 1).reshape(1, CODEBOOKS, 1)


def one_copy_per_stream(
    copies: list[Model], prompt_frames: int, frames: int, codecs: list[RedCodecInfer] | None = None
) -> tuple[float, float]:
    """N threads, each its own copy running upstream's loop (and its codec's `decode_one_token`, if given):
    (wall seconds, mean seconds to the first frame, or to its audio)."""
    firsts: list[float] = []
    start = threading.Barrier(len(copies) + 1)

    def run(model: Model, seed: int, codec: RedCodecInfer | None) -> None:
        tokens, mask = prompt(prompt_frames, seed)
        model.reset_caches()
        t, m, positions = tokens[None], mask[None], torch.arange(prompt_frames)[None]
        cache: dict[str, torch.Tensor] = {}
        start.wait()
        began = time.perf_counter()
        with torch.inference_mode():
            for index in range(frames):
                frame = model.generate_frame(t, m, positions, 0.9, 30).long()
                if codec is not None:
                    _, cache = codec.decode_one_token(audible(frame), cache, last_token=index == frames - 1)
                if index == 0:
                    firsts.append(time.perf_counter() - began)
                text = torch.zeros((1, 1), dtype=torch.long)
                t = torch.cat([frame, text], dim=1)[:, None]
                m = torch.cat([torch.ones_like(frame, dtype=torch.bool), text.bool()], dim=1)[:, None]
                positions = positions[:, -1:] + 1

    threads = [
        threading.Thread(target=run, args=(model, i, None if codecs is None else codecs[i]))
        for i, model in enumerate(copies)
    ]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began, statistics.mean(firsts)


class PerStreamCodec:
    """Upstream's `decode_one_token` for each stream in turn, on one codec: (slot -> audio) as `CodecSlots`."""

    def __init__(self, codec: RedCodecInfer) -> None:
        self.codec = codec
        self.caches: dict[int, dict[str, torch.Tensor]] = {}

    def start(self, slot: int) -> None:
        self.caches[slot] = {}

    def decode(self, frames: dict[int, tuple[torch.Tensor, bool]]) -> dict[int, torch.Tensor]:
        audio = {}
        for slot, (frame, last) in frames.items():
            chunk, self.caches[slot] = self.codec.decode_one_token(audible(frame), self.caches[slot], last)
            audio[slot] = chunk[0]
        return audio


def batched(
    batcher: FrameBatcher,
    streams: int,
    prompt_frames: int,
    frames: int,
    codec: CodecSlots | PerStreamCodec | None = None,
) -> tuple[float, float]:
    """All streams on one copy: each joins (its prefill), then one step a frame for all, each step's frames
    decoded by `codec` if given: (wall s, mean s to a stream's first frame, or to its audio)."""
    began = time.perf_counter()
    last: dict[int, torch.Tensor] = {}
    firsts = []
    with torch.inference_mode():
        for seed in range(streams):
            stream, frame = batcher.join(
                *prompt(prompt_frames, seed), Sampling(0.9, 30, torch.Generator().manual_seed(seed))
            )
            last[stream] = frame
            if codec is not None:
                codec.start(stream)
                codec.decode({stream: (audible(frame).flatten(), False)})
            firsts.append(time.perf_counter() - began)
        for index in range(frames - 1):
            last = batcher.step(last)
            if codec is not None:
                codec.decode({s: (audible(f).flatten(), index == frames - 2) for s, f in last.items()})
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
    parser.add_argument("--codec", action="store_true", help="decode every frame to audio too (see above)")
    parser.add_argument("--codec-width", type=int, default=512)
    parser.add_argument("--codec-layers", type=int, default=4)
    args = parser.parse_args()
    if args.codec:
        with_codec(args)
        return

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


def with_codec(args: argparse.Namespace) -> None:
    """The three ways of the docstring, every frame decoded to audio."""
    model = build_model(args.layers, args.width, args.context)
    codec = build_streaming_codec(args.codec_width, args.codec_layers)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    decoder = sum(p.numel() for p in codec.acoustic_decoder.parameters()) / 1e6
    print(
        f"model: {params:.0f} M parameters, codec decoder {decoder:.0f} M; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    ways = ("per_copy", "batched_codec_per_stream", "batched_codec_batched")
    print("streams | " + " | ".join(f"{way}: frames/s, RTF/stream, first audio" for way in ways))
    rows = []
    for streams in args.streams:
        copies = [copy.deepcopy(model) for _ in range(streams)]
        for each in copies:
            each.setup_caches(1)
        codecs = [copy.deepcopy(codec) for _ in range(streams)]
        batcher = FrameBatcher(copy.deepcopy(model), max_streams=streams)
        runs: dict[str, Callable[[], tuple[float, float]]] = {
            ways[0]: functools.partial(one_copy_per_stream, copies, args.prompt_frames, args.frames, codecs),
            ways[1]: functools.partial(
                batched, batcher, streams, args.prompt_frames, args.frames, PerStreamCodec(codec)
            ),
            ways[2]: functools.partial(
                batched, batcher, streams, args.prompt_frames, args.frames, CodecSlots(codec, streams)
            ),
        }
        # The ways take turns run by run, so that a change in the machine's load falls on all three alike.
        results: dict[str, list[tuple[float, float]]] = {way: [] for way in ways}
        for _ in range(args.runs):
            for way, run in runs.items():
                results[way].append(run())
        row: dict[str, Any] = {"streams": streams}
        for way in ways:
            wall = statistics.median(r[0] for r in results[way])
            first = statistics.median(r[1] for r in results[way])
            row[way] = {
                "frames_per_s": round(streams * args.frames / wall, 1),
                "rtf_per_stream": round(wall / args.frames / FRAME_S, 3),
                "first_audio_ms": round(first * 1000, 1),
            }
        rows.append(row)
        cells = [row[way] for way in ways]
        print(
            f"{streams:7d} | "
            + " | ".join(
                f"{c['frames_per_s']:8.1f} {c['rtf_per_stream']:8.3f} {c['first_audio_ms']:8.1f} ms" for c in cells
            ),
            flush=True,
        )
    print(json.dumps({"machine": platform.processor() or platform.machine(), "args": vars(args), "rows": rows}))


if __name__ == "__main__":
    main()
