"""FireRedTTS2 on a GPU at its real size, random weights: upstream's eager loop against many streams per copy.

One command, made for a short loan of a GPU machine that reaches no package registry:

    python bench/fireredtts2_gpu.py --wheels .parley/gpu-wheels          # on the GPU machine
    python bench/fireredtts2_gpu.py --fetch-wheels .parley/gpu-wheels    # beforehand, where PyPI is reachable
    python bench/fireredtts2_gpu.py --tiny --device cpu                  # the script itself, on any CPU

What it needs beyond PyTorch's CUDA image (torchtune, torchao, the FireRedTTS2 package) it installs
from `--wheels` with `pip --no-index --no-deps` when the import fails; torchtune's own package
imports several libraries this model never calls (HF `datasets`, `omegaconf`, tokenizer back-ends),
and those that are missing get an inert stand-in, said on the first lines. The imports are checked
before anything heavy.

The model is FireRedTTS2's LLM as upstream configures it: backbone qwen-1.5b (28 layers, width 1536),
decoder qwen-200m, 16 codebooks, audio vocabulary 2051, text vocabulary 151,936, in bf16. Measured:

- upstream: `setup_caches(1)` and `Model.generate_frame` in a loop, one stream: time to the first
  frame (prefill of the prompt + one frame) and the per-frame time (RTF = per frame / 80 ms);
- batched (engines/fireredtts2_batch.py) at each `--streams` N: N streams on one copy; time to the
  first frame of a stream that joins a batch already running N-1, per-stream RTF (step time / 80 ms),
  aggregate frames per second, and peak GPU memory.

- graphed (engines/fireredtts2_graphs.py, `PARLEY_TTS_FIREREDTTS2_CUDA_GRAPHS`): the same, with each
  step replayed as a CUDA graph (one per batch size, captured first: `capture_s`). With `--device
  cpu` the same fixed-shape step runs eagerly, which checks the path but measures nothing.

- codec (with `--codec-config`): the codec's streaming decode of one frame for N streams, upstream's
  `decode_one_token` for each stream in turn against one batched pass (`CodecSlots`,
  engines/fireredtts2_codec_batch.py), float32 as upstream runs the codec, random weights. The
  package ships no codec config (upstream's config_codec.json comes with the weights), so this
  part runs only when given one, e.g. a models directory's `config_codec.json`; without it the
  codec is left out (`--tiny` times a tiny codec instead, which checks the path). Only the decoding
  half is built: the encoders (a Whisper-large encoder among them) never run when decoding.

Targets on one H100: first audio <= 50 ms, RTF <= 0.1 for one stream, >= 32 real-time streams.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WHEELS = ("torchtune==0.6.1", "torchao==0.17.0", "tts-webui-fireredtts2==0.1.0")
# Imported by torchtune's package __init__ (datasets, config, tokenizers), never by the qwen2 model.
UNUSED_BY_THE_MODEL = ("datasets", "omegaconf", "sentencepiece", "tiktoken", "blobfile", "kagglehub", "PIL")
FRAME_S = 0.08
CODEBOOKS = 16


class _Inert(types.ModuleType):
    """A stand-in module: any attribute is another stand-in (a class can subclass it, a call returns one)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {"__init__": lambda self, *a, **k: None, "__call__": lambda self, *a, **k: self})


class _InertFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots: Sequence[str]) -> None:
        self.roots = set(roots)

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _Inert(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def prepare_imports(wheels: Path | None) -> None:
    """torchtune and the FireRedTTS2 package importable, from `wheels` if need be; stand-ins for the unused."""
    missing = [name for name in ("torchtune", "torchao", "fireredtts2") if importlib.util.find_spec(name) is None]
    if missing and wheels is not None:
        print(f"installing {', '.join(missing)} from {wheels}", flush=True)
        files = [str(path) for path in sorted(wheels.glob("*.whl"))]
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", *files], check=True)
        importlib.invalidate_caches()
    absent = [name for name in UNUSED_BY_THE_MODEL if importlib.util.find_spec(name) is None]
    if absent:
        print(f"stand-ins for {', '.join(absent)} (torchtune imports them; the model does not use them)", flush=True)
        sys.meta_path.insert(0, _InertFinder(absent))


def fetch_wheels(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(directory), *WHEELS], check=True)
    print(f"wheels in {directory}: carry it to the GPU machine with the tree")


def fireredtts2_llm() -> Any:
    """The package's LLM module, without the package's __init__ (it imports torchaudio, which is not needed)."""
    if "fireredtts2" not in sys.modules:
        spec = importlib.util.find_spec("fireredtts2")
        assert spec is not None and spec.submodule_search_locations is not None
        package = types.ModuleType("fireredtts2")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["fireredtts2"] = package
    return importlib.import_module("fireredtts2.llm.llm")


def build(tiny: bool, device: Any, dtype: Any) -> Any:
    import torch

    llm = fireredtts2_llm()
    Model, ModelArgs = llm.Model, llm.ModelArgs  # noqa: N806 (classes)
    backbone, decoder, text_vocab = "qwen-1.5b", "qwen-200m", 151_936
    if tiny:
        from fireredtts2.llm.modules import FLAVORS
        from torchtune.models.qwen2 import qwen2

        def small(layers: int, length: int) -> Any:
            return lambda: qwen2(
                vocab_size=8,
                num_layers=layers,
                num_heads=4,
                num_kv_heads=2,
                embed_dim=128,
                intermediate_dim=256,
                max_seq_len=length,
                norm_eps=1e-6,
            )

        FLAVORS["gpu-bench-tiny-backbone"], FLAVORS["gpu-bench-tiny-decoder"] = small(2, 512), small(1, CODEBOOKS)
        backbone, decoder, text_vocab = "gpu-bench-tiny-backbone", "gpu-bench-tiny-decoder", 1000
    args = ModelArgs(
        backbone_flavor=backbone,
        decoder_flavor=decoder,
        text_vocab_size=text_vocab,
        audio_vocab_size=2051,
        audio_num_codebooks=CODEBOOKS,
        decoder_loss_weight=0.6,
        use_text_loss=True,
    )
    from fireredtts2.llm.utils import init_weights

    torch.manual_seed(0)
    with torch.device(device):
        model = init_weights(Model(args))
    return model.to(dtype=dtype).eval()


def prompt(length: int, seed: int, device: Any) -> tuple[Any, Any]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    tokens = torch.zeros((length, CODEBOOKS + 1), dtype=torch.long)
    mask = torch.zeros((length, CODEBOOKS + 1), dtype=torch.bool)
    text = length // 3
    tokens[:text, -1] = torch.randint(1, 1000, (text,), generator=generator)
    mask[:text, -1] = True
    tokens[text:, :-1] = torch.randint(0, 2051, (length - text, CODEBOOKS), generator=generator)
    mask[text:, :-1] = True
    return tokens.to(device), mask.to(device)


def upstream(model: Any, prompt_frames: int, frames: int, device: Any) -> dict[str, float]:
    """Upstream's loop, one stream: first frame and per-frame time."""
    import torch

    model.setup_caches(1)
    tokens, mask = prompt(prompt_frames, 0, device)
    t, m, positions = tokens[None], mask[None], torch.arange(prompt_frames, device=device)[None]
    times = []
    with torch.inference_mode():
        for _ in range(frames):
            began = time.perf_counter()
            frame = model.generate_frame(t, m, positions, 0.9, 30).long()
            synchronize(device)
            times.append(time.perf_counter() - began)
            text = torch.zeros((1, 1), dtype=torch.long, device=device)
            t = torch.cat([frame, text], dim=1)[:, None]
            m = torch.cat([torch.ones_like(frame, dtype=torch.bool), text.bool()], dim=1)[:, None]
            positions = positions[:, -1:] + 1
    per_frame = sorted(times[1:])[len(times[1:]) // 2]
    return {"first_frame_ms": round(times[0] * 1000, 1), "frame_ms": round(per_frame * 1000, 2),
            "rtf": round(per_frame / FRAME_S, 3)}  # fmt: skip


def batched(
    model: Any, streams: int, prompt_frames: int, frames: int, device: Any, graphs: bool = False
) -> dict[str, float]:
    """N streams on one copy: a late joiner's first frame, then `frames` steps of all N (as CUDA graphs)."""
    import torch

    from parley_tts.engines.fireredtts2_batch import FrameBatcher, Sampling
    from parley_tts.engines.fireredtts2_graphs import BucketedFrameStep, GraphedFrameStep, batch_buckets

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    batcher = FrameBatcher(model, max_streams=streams, scratch_slot=graphs)
    capture_s = 0.0
    if graphs:
        began = time.perf_counter()
        step_class = GraphedFrameStep if device.type == "cuda" else BucketedFrameStep
        batcher.fast_step = step_class(batcher, batch_buckets(streams))
        synchronize(device)
        capture_s = time.perf_counter() - began
    last = {}
    for seed in range(streams - 1):
        stream, frame = batcher.join(*prompt(prompt_frames, seed, device), Sampling(0.9, 30))
        last[stream] = frame
    synchronize(device)
    began = time.perf_counter()
    stream, frame = batcher.join(*prompt(prompt_frames, streams, device), Sampling(0.9, 30))
    synchronize(device)
    first = time.perf_counter() - began
    last[stream] = frame
    times = []
    for _ in range(frames):
        began = time.perf_counter()
        last = batcher.step(last)
        synchronize(device)
        times.append(time.perf_counter() - began)
    step = sorted(times[1:])[len(times[1:]) // 2]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    for each in list(last):
        batcher.leave(each)
    return {
        "streams": streams,
        "late_join_first_frame_ms": round(first * 1000, 1),
        "step_ms": round(step * 1000, 2),
        "rtf_per_stream": round(step / FRAME_S, 3),
        "frames_per_s": round(streams / step, 1),
        "real_time_streams": streams if step <= FRAME_S else 0,
        "peak_gib": round(peak, 2),
        **({"capture_s": round(capture_s, 1)} if graphs else {}),
    }


TINY_CODEC = {
    "rvq": {"input_dim": 64, "rvq_dim": 32, "output_dim": 32, "num_quantizers": CODEBOOKS, "codebook_size": 2048,
            "codebook_dim": 8},
    "upsample": {"embed_dim": 32, "stride": 4},
    "acoustic_decoder": {"embed_dim": 32, "num_layers": 1, "num_heads": 2, "hop_length": 240, "causal": True},
}  # fmt: skip


def decoding_codec(sections: dict[str, Any], device: Any) -> Any:
    """The codec's decoding half (RVQ, `UpConv`, the causal acoustic decoder) from config_codec.json's
    sections, random weights, as a `RedCodecInfer` whose encoders are absent."""
    import torch

    fireredtts2_llm()  # the package's namespace without its __init__
    from fireredtts2.codec.decoder import AcousticDecoder
    from fireredtts2.codec.model import RedCodec, RedCodecInfer, UpConv
    from fireredtts2.codec.rvq import ResidualVQ

    torch.manual_seed(0)
    with torch.device(device):
        rvq = ResidualVQ(**sections["rvq"])
        codec = RedCodec(
            None, None, None, None, rvq, UpConv(**sections["upsample"]), None,  # type: ignore[arg-type]
            AcousticDecoder(**sections["acoustic_decoder"]),
        )  # fmt: skip
        for quantizer in rvq.quantizers:
            quantizer.codebook.normal_()
    return RedCodecInfer(codec).eval()


def codec_decode(codec: Any, streams: int, frames: int, device: Any) -> dict[str, float]:
    """One frame's decode for N streams: upstream's `decode_one_token` per stream in turn, then batched."""
    import torch

    from parley_tts.engines.fireredtts2_codec_batch import CodecSlots

    generator = torch.Generator().manual_seed(streams)
    codes = torch.randint(0, int(codec.rvq.codebook_size), (frames, streams, CODEBOOKS), generator=generator)
    codes = codes.to(device)
    caches: list[dict[str, Any]] = [{} for _ in range(streams)]
    per_stream, together = [], []
    with torch.inference_mode():
        for frame in codes:
            began = time.perf_counter()
            for index in range(streams):
                _, caches[index] = codec.decode_one_token(frame[index][None, :, None], caches[index], False)
            synchronize(device)
            per_stream.append(time.perf_counter() - began)
        slots = CodecSlots(codec, streams)
        for index in range(streams):
            slots.start(index)
        for frame in codes:
            began = time.perf_counter()
            slots.decode({index: (frame[index], False) for index in range(streams)})
            synchronize(device)
            together.append(time.perf_counter() - began)

    def median_ms(times: list[float]) -> float:
        return sorted(times[1:])[len(times[1:]) // 2] * 1000

    return {
        "streams": streams,
        "per_stream_ms": round(median_ms(per_stream), 2),
        "batched_ms": round(median_ms(together), 2),
        "batched_rtf_share": round(median_ms(together) / 1000 / FRAME_S, 3),
    }


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheels", type=Path, help="wheels of what the GPU machine lacks (--fetch-wheels makes them)")
    parser.add_argument("--fetch-wheels", type=Path, help="download those wheels here and stop")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--prompt-frames", type=int, default=200, help="a voice's prompt and the text")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny model (checks the script, measures nothing)")
    parser.add_argument("--no-graphs", action="store_true", help="leave out the CUDA-graph step")
    parser.add_argument("--codec-config", type=Path, help="a config_codec.json: time the codec's decode too")
    args = parser.parse_args()
    if args.fetch_wheels:
        fetch_wheels(args.fetch_wheels)
        return
    started = time.perf_counter()
    prepare_imports(args.wheels)
    import torch

    # Only the batching module of the TTS service (it needs torch alone): no service package to install.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services" / "tts" / "src"))
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {name}; imports ready in {time.perf_counter() - started:.1f} s", flush=True)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build(args.tiny, device, dtype)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters, {dtype}", flush=True)
    result: dict[str, Any] = {
        "device": name,
        "torch": torch.__version__,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    result["upstream_one_stream"] = upstream(model, args.prompt_frames, args.frames, device)
    print("upstream, one stream:", result["upstream_one_stream"], flush=True)
    result["batched"] = []
    for streams in args.streams:
        row = batched(model, streams, args.prompt_frames, args.frames, device)
        result["batched"].append(row)
        print("batched:", row, flush=True)
    if not args.no_graphs:
        result["graphed"] = []
        for streams in args.streams:
            row = batched(model, streams, args.prompt_frames, args.frames, device, graphs=True)
            result["graphed"].append(row)
            print("graphed:", row, flush=True)
    if args.codec_config or args.tiny:
        sections = json.loads(args.codec_config.read_text())["codec"] if args.codec_config else TINY_CODEC
        codec = decoding_codec(sections, device)
        result["codec"] = []
        for streams in args.streams:
            row = codec_decode(codec, streams, args.frames, device)
            result["codec"].append(row)
            print("codec:", row, flush=True)
    print(json.dumps(result))
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
