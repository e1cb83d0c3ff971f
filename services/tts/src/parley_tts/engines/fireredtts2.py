"""FireRedTTS2: a dual-transformer TTS that clones voices and keeps a dialogue's earlier turns as context.

The model works on *frames* of 17 columns, 12.5 per second of audio: 16 audio codebook indices and one
text-token column. An utterance in its context is its text frames (`[S1]<|text_start|>…<|text_end|>`,
one token per frame) followed by its audio frames and an all-zero end-of-speech (EOS) frame. To speak,
the context and the new utterance's text frames are prefilled into the backbone, then each step
(`Model.generate_frame`: one backbone step, 15 decoder passes) samples one audio frame, until an EOS
frame or `max_frames`. The codec turns frames into 24 kHz audio (1,920 samples each); its streaming
decoder runs one frame behind generation, because the last frame is decoded differently (`last_token`).

How it clones: the post-trained checkpoint continues a dialogue, so a voice's reference recording goes
first in the context as a `Segment` (speaker tag, transcript, codes) and the new text, with the same
speaker tag, is spoken in that voice. Without any context the timbre is random.

What this module does differently from upstream's `FireRedTTS2_Stream`, and why:

- Context segments carry *codes*, never audio: a voice's reference is encoded once (`encode_reference`,
  which runs a Whisper-large encoder) and earlier turns are the codes the model generated, so nothing
  is re-encoded per request, and earlier turns are not round-tripped through audio and resampling.
- The context is a sliding window: when it would not fit in the model's frame limit (3,100 frames
  upstream) the oldest segments are dropped, except voice prompts (`Segment.voice_prompt`).
- Every segment's text is written `[Sn]<|text_start|>text<|text_end|>`, as the fine-tuning data is;
  upstream's dialogue demo writes the tag twice in prompt segments (`[S1]<|text_start|>[S1]…`).
- The package's loaders are not used: `load_llm_model` silently falls back to random weights when the
  checkpoint is missing, `RedCodecInfer.from_pretrained` loads without `map_location` (a GPU-saved
  checkpoint fails on CPU) and hard-codes the Whisper-large-v3 size of its encoder. The same classes
  are built here from the directory's configs; `config_codec.json` may give the encoder's size in an
  optional `codec.ssl` section (tests use a tiny one), which upstream's configs do not have.
- No torchaudio (it has no CPU wheel): the package `__init__` imports it through its top module, so
  only the `llm`, `codec` and `utils` submodules are imported (see `_import_fireredtts2`), and audio is
  resampled with soxr.

One `FireRedTTS2Model` is one model copy with its own KV caches: only one thread may use it at a time
(the service keeps copies in a `parley.models.ModelPool`), and it starts no threads of its own.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import pickle
import re
import sys
import threading
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import soxr
import torch

from parley.pcm import Float32Array
from parley_tts.engines.base import Context, StoredVoice, UnknownVoice, UnspeakableText, Utterance, VoiceInfo

log = logging.getLogger(__name__)

Codes = npt.NDArray[np.int64]  # (frames, codebooks) codebook indices

SPEAKERS = ("[S1]", "[S2]", "[S3]", "[S4]")
# Upstream's limit on prompt + generated frames: longer sequences were never trained.
UPSTREAM_FRAME_LIMIT = 3100
CHECKPOINTS = ("pretrain", "posttrain")
TOKENIZER_DIR = "Qwen2.5-1.5B"
# Upstream hard-codes these for the codec's semantic encoder (Whisper-large-v3's encoder).
WHISPER_LARGE_V3 = {"embed_dim": 1280, "num_layers": 32, "num_heads": 20, "ffn_dim": 5120}
TEXT_START, TEXT_END = "<|text_start|>", "<|text_end|>"
_LEADING_SPEAKER = re.compile(r"^\s*\[S\d+\]")


def _import_fireredtts2() -> None:
    """Make `fireredtts2.llm`, `.codec` and `.utils` importable without running the package's `__init__`.

    The `__init__` imports the top module, which imports torchaudio (no CPU wheel, and unused here). A bare
    package module with the real `__path__` lets the submodules import; it stays in `sys.modules`, so a
    later plain `import fireredtts2` in this process gets it, without the `FireRedTTS2` class.
    """
    if "fireredtts2" in sys.modules:
        return
    spec = importlib.util.find_spec("fireredtts2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "FireRedTTS2 is not installed: pip install 'parley-tts[fireredtts2]' "
            "(tts-webui-fireredtts2 itself with --no-deps: it declares gradio, which is not needed)"
        )
    package = types.ModuleType("fireredtts2")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["fireredtts2"] = package


_import_fireredtts2()

from fireredtts2.codec.decoder import AcousticDecoder  # noqa: E402
from fireredtts2.codec.model import RedCodec, RedCodecInfer, ResidualDownConv, SslAdaptor, UpConv  # noqa: E402
from fireredtts2.codec.rvq import ResidualVQ  # noqa: E402
from fireredtts2.codec.whisper import (  # noqa: E402
    PretrainedWhisperEncoder,
    WhisperAcousticEncoder,
    WhisperMelExtractor,
)
from fireredtts2.llm.llm import Model, ModelArgs  # noqa: E402
from fireredtts2.llm.utils import load_custom_tokenizer  # noqa: E402
from fireredtts2.utils.spliter import clean_text  # noqa: E402


class MissingModelFiles(FileNotFoundError):
    """The models directory lacks files; `missing` names each (relative to the directory)."""

    def __init__(self, models_dir: Path, missing: list[str]) -> None:
        self.models_dir = models_dir
        self.missing = missing
        super().__init__(f"FireRedTTS2 models directory {models_dir} is missing: {', '.join(missing)}")


class ContextTooLong(ValueError):
    """The request does not fit in the model's frame limit even with every droppable segment dropped."""


@dataclass(frozen=True)
class Segment:
    """One utterance in the model's context.

    `codes` are the codebook indices of its audio, shape (frames, 16), without an EOS frame: from
    `encode_reference` for a voice's reference recording, from `last_codes` for a generated turn.
    `voice_prompt` marks a voice's reference: the sliding window never drops it. Put it first.
    """

    speaker: str  # "[S1]".."[S4]"
    text: str
    codes: Codes
    voice_prompt: bool = False


class _Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def __len__(self) -> int: ...


@dataclass
class _Stream:
    """One `speak` call's state between frames: the next backbone input and the codec's streaming caches."""

    tokens: torch.Tensor  # (1, s, 17) what generate_frame gets next: the prompt, then the last frame
    mask: torch.Tensor  # (1, s, 17) which columns of `tokens` count
    positions: torch.Tensor  # (1, s)
    codec_cache: dict[str, torch.Tensor] = field(default_factory=dict)
    pending: torch.Tensor | None = None  # (1, 16) generated, not yet decoded (decoding runs one behind)


class FireRedTTS2Model:
    """One FireRedTTS2 copy: backbone + decoder (the "LLM"), the codec and the text tokenizer.

    Use it from one thread at a time. `llm`, `codec` and `tokenizer` are the package's own objects.
    """

    sample_rate = 24000  # of the audio `speak` yields
    frame_samples = 1920  # 80 ms at 24 kHz: one frame's audio
    reference_rate = 16000  # the codec encodes 16 kHz audio

    def __init__(self, llm: Model, codec: RedCodecInfer, tokenizer: _Tokenizer, frame_limit: int) -> None:
        self.llm = llm
        self.codec = codec
        self.tokenizer = tokenizer
        self.device = next(llm.parameters()).device
        self.codebooks: int = llm.config.audio_num_codebooks
        self.audio_vocab: int = llm.config.audio_vocab_size
        # Beyond its own max_seq_len the backbone's KV cache and mask have no room.
        self.frame_limit: int = min(frame_limit, llm.backbone.max_seq_len)
        quantizers = codec.rvq.num_quantizers
        if quantizers != self.codebooks:
            raise ValueError(f"the LLM writes {self.codebooks} codebooks but the codec reads {quantizers}")
        if len(tokenizer) > llm.config.text_vocab_size:
            raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, the LLM {llm.config.text_vocab_size}")
        # A sampled index past the codec's codebooks would be an out-of-range lookup (a device-side assert
        # on CUDA, which kills the process's CUDA context): such frames are clamped for decoding only.
        self._codec_max = int(codec.rvq.codebook_size) - 1
        self.last_codes: Codes | None = None
        with torch.inference_mode():
            llm.setup_caches(1)

    @classmethod
    def load(
        cls,
        models_dir: Path,
        device: str,
        checkpoint: str = "posttrain",
        bf16: bool = True,
        frame_limit: int = UPSTREAM_FRAME_LIMIT,
    ) -> FireRedTTS2Model:
        """Load from a directory laid out like upstream's `pretrained_models/FireRedTTS2`.

        It holds config_llm.json, llm_pretrain.pt and/or llm_posttrain.pt (`checkpoint` picks one: the
        post-trained one speaks dialogues and clones from context), config_codec.json, codec.pt and the
        Qwen2.5-1.5B/ tokenizer. Anything missing is one `MissingModelFiles` naming every missing file.
        The LLM runs in bfloat16 on a CUDA device that supports it when `bf16`, else in float32 (always
        on CPU); the codec always in float32, as upstream.
        """
        if checkpoint not in CHECKPOINTS:
            raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, not {checkpoint!r}")
        files = _find_files(Path(models_dir), checkpoint)
        target = torch.device(device)
        use_bf16 = bf16 and target.type == "cuda" and torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if use_bf16 else torch.float32
        tokenizer: _Tokenizer = load_custom_tokenizer(str(files["tokenizer"]))
        llm = _load_llm(files["config_llm"], files["llm"], target, dtype)
        codec = _load_codec(files["config_codec"], files["codec"], target)
        log.info("FireRedTTS2 loaded from %s (%s checkpoint, %s, %s)", models_dir, checkpoint, target, str(dtype)[6:])
        return cls(llm, codec, tokenizer, frame_limit)

    # --- voices -------------------------------------------------------------------------------------

    def encode_reference(self, audio: Float32Array, sample_rate: int = reference_rate) -> Codes:
        """The codes of a reference recording (mono float32), shape (frames, 16): compute once per voice.

        This runs the codec's encoders (a Whisper-large encoder on the real weights): seconds on a GPU,
        much longer on CPU. One frame per 80 ms of audio.
        """
        samples = np.asarray(audio, dtype=np.float32)
        if samples.ndim != 1 or samples.size == 0:
            raise ValueError(f"reference audio must be non-empty mono samples, got shape {samples.shape}")
        if sample_rate != self.reference_rate:
            samples = np.asarray(soxr.resample(samples, sample_rate, self.reference_rate), dtype=np.float32)
        return self._encode(samples)

    @torch.inference_mode()
    def _encode(self, samples: Float32Array) -> Codes:
        tokens, _ = self.codec.encode(torch.from_numpy(samples).unsqueeze(0).to(self.device))  # (1, 16, frames)
        return np.ascontiguousarray(tokens[0].T.cpu().numpy(), dtype=np.int64)

    # --- speaking -----------------------------------------------------------------------------------

    def speak(
        self,
        text: str,
        speaker: str,
        context: Sequence[Segment],
        stop: threading.Event,
        *,
        max_frames: int,
        temperature: float = 0.9,
        top_k: int = 20,
    ) -> Iterator[Float32Array]:
        """Speak `text` as `speaker` after `context`: float32 mono chunks at 24 kHz, one per frame.

        Chunk i is frame i's audio (1,920 samples; the first is 360 shorter and the last 360 longer, the
        codec's overlap). It comes one frame late, as the codec needs to know whether a frame is the last.
        Generation ends at the model's end-of-speech frame or after `max_frames` frames. `stop` is checked
        before every frame: once set, no further frame is generated and nothing more is yielded.

        The context is fed from its segments' codes. If context + text + `max_frames` would exceed the
        frame limit, the oldest segments that are not voice prompts are dropped; `ContextTooLong` if even
        that is not enough. Afterwards `last_codes` holds the codes of exactly the chunks yielded (also
        when stopped or closed early), to go into the next call's context as a `Segment`.
        """
        self.last_codes = None
        if max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, not {max_frames}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, not {temperature}")
        if not 1 <= top_k <= self.audio_vocab:
            raise ValueError(f"top_k must be in 1..{self.audio_vocab}, not {top_k}")
        tokens, mask = self._prompt(text, speaker, context, max_frames)
        return self._frames(tokens, mask, stop, max_frames, temperature, top_k)

    def _frames(
        self,
        tokens: npt.NDArray[np.int64],
        mask: npt.NDArray[np.bool_],
        stop: threading.Event,
        max_frames: int,
        temperature: float,
        top_k: int,
    ) -> Iterator[Float32Array]:
        spoken: list[Codes] = []
        try:
            stream = self._start(tokens, mask)
            for _ in range(max_frames):
                if stop.is_set():
                    return  # the pending frame's audio is not wanted any more
                frame = self._next_frame(stream, temperature, top_k)
                if frame is None:
                    break
                if stop.is_set():
                    return  # set while the frame was computed (from another thread): nothing more to yield
                if stream.pending is not None:
                    audio, codes = self._decode(stream, last=False)
                    spoken.append(codes)  # before the yield: a consumer may close us there
                    yield audio
                stream.pending = frame
            if stream.pending is not None and not stop.is_set():
                audio, codes = self._decode(stream, last=True)
                spoken.append(codes)
                yield audio
        finally:
            self.last_codes = np.stack(spoken) if spoken else np.zeros((0, self.codebooks), dtype=np.int64)

    def _prompt(
        self, text: str, speaker: str, context: Sequence[Segment], max_frames: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """The frames to prefill: the context that fits (oldest non-prompt segments dropped first) + the text."""
        if speaker not in SPEAKERS:
            raise ValueError(f"speaker must be one of {SPEAKERS}, not {speaker!r}")
        request = self._text_frames(speaker, text)
        if request is None:
            raise UnspeakableText(f"nothing to say in {text!r}")
        parts = [self._segment_frames(segment) for segment in context]
        budget = self.frame_limit - max_frames - len(request[0])
        pinned = sum(len(p[0]) for p, s in zip(parts, context, strict=True) if s.voice_prompt)
        if pinned > budget:
            raise ContextTooLong(
                f"{len(request[0])} text frames + {max_frames} frames to generate + {pinned} frames of voice "
                f"prompt exceed the model's limit of {self.frame_limit} frames"
            )
        keep = [True] * len(parts)
        used = sum(len(p[0]) for p in parts)
        for i, segment in enumerate(context):  # oldest first
            if used <= budget:
                break
            if not segment.voice_prompt:
                keep[i] = False
                used -= len(parts[i][0])
        if not all(keep):
            log.info("context window: dropped %d of %d segments, oldest first", keep.count(False), len(parts))
        kept = [p for p, k in zip(parts, keep, strict=True) if k] + [request]
        return np.concatenate([p[0] for p in kept]), np.concatenate([p[1] for p in kept])

    def _text_frames(self, speaker: str, text: str) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]] | None:
        """`[Sn]<|text_start|>text<|text_end|>`, one token per frame in the last column; None if no text."""
        # A leading tag is the caller's speaker written into the text (upstream's prompt transcripts carry
        # one); the framing tokens in user text would end the text early. clean_text drops [ and ], so
        # text cannot switch speakers either.
        cleaned = clean_text(_LEADING_SPEAKER.sub("", text).replace(TEXT_START, "").replace(TEXT_END, ""))
        if not cleaned.strip():
            return None
        ids = self.tokenizer.encode(speaker + TEXT_START + cleaned + TEXT_END)
        frames = np.zeros((len(ids), self.codebooks + 1), dtype=np.int64)
        frames[:, -1] = ids
        mask = np.zeros(frames.shape, dtype=np.bool_)
        mask[:, -1] = True
        return frames, mask

    def _segment_frames(self, segment: Segment) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """A context segment: its text frames, its audio frames, then the EOS frame (all-zero codes)."""
        if segment.speaker not in SPEAKERS:
            raise ValueError(f"segment speaker must be one of {SPEAKERS}, not {segment.speaker!r}")
        codes = np.asarray(segment.codes)
        if codes.ndim != 2 or codes.shape[0] == 0 or codes.shape[1] != self.codebooks:
            raise ValueError(f"segment codes must have shape (frames >= 1, {self.codebooks}), not {codes.shape}")
        if codes.min() < 0 or codes.max() >= self.audio_vocab:
            raise ValueError(f"segment codes must lie in 0..{self.audio_vocab - 1}")
        text = self._text_frames(segment.speaker, segment.text)
        if text is None:
            raise ValueError(f"context segment without text: {segment.text!r}")
        audio = np.zeros((len(codes) + 1, self.codebooks + 1), dtype=np.int64)
        audio[:-1, :-1] = codes
        mask = np.zeros(audio.shape, dtype=np.bool_)
        mask[:, :-1] = True
        return np.concatenate([text[0], audio]), np.concatenate([text[1], mask])

    @torch.inference_mode()
    def _start(self, tokens: npt.NDArray[np.int64], mask: npt.NDArray[np.bool_]) -> _Stream:
        self.llm.reset_caches()
        return _Stream(
            tokens=torch.from_numpy(tokens).unsqueeze(0).to(self.device),
            mask=torch.from_numpy(mask).unsqueeze(0).to(self.device),
            positions=torch.arange(len(tokens), device=self.device).unsqueeze(0),
        )

    @torch.inference_mode()
    def _next_frame(self, stream: _Stream, temperature: float, top_k: int) -> torch.Tensor | None:
        """One frame (1, 16) from the backbone + decoder, the stream advanced past it; None at EOS."""
        frame: torch.Tensor = self.llm.generate_frame(
            stream.tokens, stream.mask, stream.positions, temperature, top_k
        ).long()
        if not bool(frame.any()):
            return None
        # Fed back as an audio frame: codebook columns count, the text column does not.
        text_column = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        stream.tokens = torch.cat([frame, text_column], dim=1).unsqueeze(1)
        stream.mask = torch.cat([torch.ones_like(frame, dtype=torch.bool), text_column.bool()], dim=1).unsqueeze(1)
        stream.positions = stream.positions[:, -1:] + 1
        return frame

    @torch.inference_mode()
    def _decode(self, stream: _Stream, last: bool) -> tuple[Float32Array, Codes]:
        """The pending frame's audio (the codec's streaming decoder, exactly one frame per call) and codes."""
        assert stream.pending is not None
        frame = stream.pending.clamp(max=self._codec_max).unsqueeze(-1)  # (1, 16, 1)
        audio, stream.codec_cache = self.codec.decode_one_token(frame, stream.codec_cache, last_token=last)
        stream.pending = None
        samples = np.ascontiguousarray(audio[0].float().cpu().numpy(), dtype=np.float32)
        return samples, frame[0, :, 0].cpu().numpy().astype(np.int64)


# --- loading -----------------------------------------------------------------------------------------


def _find_files(models_dir: Path, checkpoint: str) -> dict[str, Path]:
    """Every file `load` needs, or one MissingModelFiles naming each that is not there."""
    files = {
        "config_llm": models_dir / "config_llm.json",
        "llm": models_dir / f"llm_{checkpoint}.pt",
        "config_codec": models_dir / "config_codec.json",
        "codec": models_dir / "codec.pt",
    }
    missing = [path.name for path in files.values() if not path.is_file()]
    tokenizer = models_dir / TOKENIZER_DIR
    has_vocabulary = (tokenizer / "tokenizer.json").is_file() or all(
        (tokenizer / name).is_file() for name in ("vocab.json", "merges.txt")
    )
    if not has_vocabulary:
        missing.append(f"{TOKENIZER_DIR}/tokenizer.json (or vocab.json and merges.txt)")
    if missing:
        raise MissingModelFiles(models_dir, missing)
    files["tokenizer"] = tokenizer
    return files


def _read_checkpoint(path: Path, key: str) -> dict[str, torch.Tensor]:
    """The state dict under `key`, memory-mapped (a checkpoint is GBs), on CPU whatever it was saved from."""
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError:
        # A training checkpoint may pickle more than tensors; upstream loads it unrestricted, and the
        # models directory is the operator's own, trusted as upstream trusts it.
        log.warning("%s holds more than tensors: loading it without weights_only", path.name)
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    if not isinstance(checkpoint, dict) or key not in checkpoint:
        raise ValueError(f"{path} is not a FireRedTTS2 checkpoint: no {key!r} entry")
    state: dict[str, torch.Tensor] = checkpoint[key]
    return state


def _load_llm(config_path: Path, checkpoint_path: Path, device: torch.device, dtype: torch.dtype) -> Model:
    try:
        settings = json.loads(config_path.read_text())["llm_models"]
        args = ModelArgs(
            backbone_flavor=settings["backbone_flavor"],
            decoder_flavor=settings["decoder_flavor"],
            text_vocab_size=settings["text_vocab_size"],
            audio_vocab_size=settings["audio_vocab_size"],
            audio_num_codebooks=settings["audio_num_codebooks"],
            decoder_loss_weight=settings.get("decoder_loss_weight", 0.5),  # training only
            use_text_loss=True,
        )
        # Built on the target device: no multi-GB CPU copy of the randomly initialised weights first.
        with torch.device(device):
            model = Model(args)
    except KeyError as missing:
        raise ValueError(f"{config_path}: unknown or missing {missing}") from None
    model.load_state_dict(_read_checkpoint(checkpoint_path, "model"))
    return model.to(dtype=dtype).eval()


def _load_codec(config_path: Path, checkpoint_path: Path, device: torch.device) -> RedCodecInfer:
    try:
        sections: dict[str, dict[str, Any]] = json.loads(config_path.read_text())["codec"]
        with torch.device(device):
            codec = build_codec(sections)
    except KeyError as missing:
        raise ValueError(f"{config_path}: missing {missing}") from None
    if not codec.acoustic_decoder.causal:
        raise ValueError(f"{config_path}: the acoustic decoder must be causal to stream")
    codec.load_state_dict(_read_checkpoint(checkpoint_path, "generator"))
    return RedCodecInfer(codec).eval()


def build_codec(sections: dict[str, dict[str, Any]]) -> RedCodec:
    """The codec from config_codec.json's `codec` sections (random weights until a checkpoint is loaded)."""
    return RedCodec(
        semantic_encoder(sections.get("ssl", WHISPER_LARGE_V3)),
        SslAdaptor(**sections["ssl_adaptor"]),
        WhisperAcousticEncoder(**sections["acoustic_encoder"]),
        ResidualDownConv(**sections["downsample"]),
        ResidualVQ(**sections["rvq"]),
        UpConv(**sections["upsample"]),
        SslAdaptor(**sections["semantic_decoder"]),
        AcousticDecoder(**sections["acoustic_decoder"]),
    )


def semantic_encoder(size: dict[str, int]) -> PretrainedWhisperEncoder:
    """The codec's Whisper encoder (input: 128 log-mels at 16 kHz), as `PretrainedWhisperEncoder.from_pretrained`
    builds it, but of the given size; its weights come from codec.pt."""
    encoder = PretrainedWhisperEncoder(in_dim=128, max_positions=1500, **size)
    encoder.requires_grad_(False)
    encoder.feature_extractor = WhisperMelExtractor(
        num_mels=128, sampling_rate=16000, hop_length=160, n_fft=400, fmin=0, fmax=8000
    )
    return encoder


# --- the engine, as the service sees it ----------------------------------------------------------

RANDOM_VOICE = "fireredtts2-random"
# One frame per character of text is ~12 characters per second of speech: twice as slow as
# people speak. Random or broken weights never say EOS; this bounds what they can run on.
FRAMES_PER_CHAR = 1.0
MIN_FRAMES = 25  # 2 s: short words still get their full length


def codes_to_bytes(codes: Codes) -> bytes:
    """A voice's prompt codes as stored: a .npy of int16 (frames, 16) (indices < 2051 fit)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(codes, dtype=np.int16), allow_pickle=False)
    return buffer.getvalue()


def codes_from_bytes(data: bytes) -> Codes:
    codes = np.load(io.BytesIO(data), allow_pickle=False)
    if codes.ndim != 2:
        raise ValueError(f"stored prompt codes have shape {codes.shape}, not (frames, codebooks)")
    return np.asarray(codes, dtype=np.int64)


@dataclass
class DialogueMemory:
    """What a FireRedTTS2 conversation or dialogue remembers: its voice prompts and spoken turns, oldest first.

    A voice prompt is a stored voice's reference (its transcript and prompt codes), put in once per speaker
    the first time that speaker speaks in that voice; turns are what the model generated, as codes. The
    model keeps the voices the same across turns from this context; the sliding window in `speak` drops
    the oldest turns, never the prompts.
    """

    segments: list[Segment] = field(default_factory=list)
    prompts: dict[str, str] = field(default_factory=dict)  # speaker tag -> stored voice id of its prompt


class FireRedTTS2Synthesizer:
    """The `SpeechSynthesizer` over one `FireRedTTS2Model` copy.

    It has one built-in voice, random timbre (`fireredtts2-random`: the model picks a voice, and the
    conversation's context keeps it), and speaks any stored voice from its prompt codes. Speed is the
    model's own: FireRedTTS2 has no rate control, so only 1.0 is accepted.
    """

    engine = "fireredtts2"
    cloning = True
    sample_rate = FireRedTTS2Model.sample_rate

    def __init__(self, model: FireRedTTS2Model, max_frames: int, temperature: float = 0.9, top_k: int = 20) -> None:
        self.model = model
        self.max_frames = max_frames
        self.temperature = temperature
        self.top_k = top_k

    def voices(self) -> list[VoiceInfo]:
        return [VoiceInfo(RANDOM_VOICE, "FireRedTTS2 random timbre", "multilingual", self.sample_rate)]

    def new_context(self) -> DialogueMemory:
        return DialogueMemory()

    def synthesize(self, utterance: Utterance, context: Context) -> Iterator[Float32Array]:
        if not isinstance(context, DialogueMemory):
            raise TypeError(f"a FireRedTTS2 context is a DialogueMemory, not {type(context).__name__}")
        if abs(utterance.speed - 1.0) > 1e-6:
            raise UnspeakableText("the fireredtts2 engine speaks at its own rate: speed must be 1.0")
        speaker = f"[S{utterance.speaker}]"
        voice = utterance.voice
        if isinstance(voice, StoredVoice):
            if context.prompts.get(speaker) != voice.id:
                _forget_speaker(context, speaker)  # what it said in another voice would pull towards that voice
                context.prompts[speaker] = voice.id
                context.segments.insert(
                    _prompt_count(context), Segment(speaker, voice.transcript, codes_from_bytes(voice.codes), True)
                )
        elif voice == RANDOM_VOICE:
            if speaker in context.prompts:
                _forget_speaker(context, speaker)
        else:
            raise UnknownVoice(voice)
        frames = min(self.max_frames, max(MIN_FRAMES, int(len(utterance.text) * FRAMES_PER_CHAR)))
        stop = threading.Event()  # the pool stops us by closing this generator between frames
        try:
            yield from self.model.speak(
                utterance.text,
                speaker,
                context.segments,
                stop,
                max_frames=frames,
                temperature=self.temperature,
                top_k=self.top_k,
            )
        finally:
            spoken = self.model.last_codes
            if spoken is not None and len(spoken):
                context.segments.append(Segment(speaker, utterance.text, spoken))
                _forget_beyond(context, self.model.frame_limit)

    def encode_reference(self, audio_16k: Float32Array, transcript: str) -> bytes:
        if not transcript.strip():
            raise ValueError("a FireRedTTS2 voice needs the transcript of its reference")
        return codes_to_bytes(self.model.encode_reference(audio_16k, FireRedTTS2Model.reference_rate))


def _forget_speaker(memory: DialogueMemory, speaker: str) -> None:
    """A speaker changes voice: its prompt and its earlier turns leave the context."""
    memory.segments = [segment for segment in memory.segments if segment.speaker != speaker]
    memory.prompts.pop(speaker, None)


def _prompt_count(memory: DialogueMemory) -> int:
    return sum(1 for segment in memory.segments if segment.voice_prompt)


def _forget_beyond(memory: DialogueMemory, frame_limit: int) -> None:
    """Keep what is stored bounded: turns that could never fit in the window again are dropped now."""
    total = 0
    for index in range(len(memory.segments) - 1, -1, -1):
        segment = memory.segments[index]
        total += len(segment.codes) + len(segment.text) + 4
        if total > frame_limit and not segment.voice_prompt:
            del memory.segments[index]
