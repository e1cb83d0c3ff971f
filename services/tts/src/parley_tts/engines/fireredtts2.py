"""FireRedTTS2: a dual-transformer TTS that clones voices and keeps a dialogue's earlier turns as context.

The model works on *frames* of 17 columns, 12.5 per second of audio: 16 audio codebook indices and one
text-token column. A segment of its input is text frames (`[S1]<|text_start|>…<|text_end|>`, one token per
frame) followed by audio frames. To speak, the prompt is prefilled into the backbone, then each step
(`Model.generate_frame`: one backbone step, 15 decoder passes) samples one audio frame, until the model's
all-zero end-of-speech (EOS) frame or a bound. The codec turns frames into 24 kHz audio (1,920 samples
each); its streaming decoder runs one frame behind generation, because the last frame is decoded
differently (`last_token`).

The model is fed as upstream's own inference code feeds it (`FireRedTTS2` and `FireRedTTS2_Stream` in
fireredtts2/fireredtts2.py, FireRedTeam/FireRedTTS2 at 404f3f6); `test_fireredtts2_parity.py` runs the
package's class beside this engine on the same weights and seeds. There are two recipes:

- **Dialogue** (the post-trained checkpoint, `llm_posttrain.pt`; dialogues, conversations, cloning): the
  prompt is every speaker's voice prompt (`[Sn]<|text_start|>[Sn]transcript<|text_end|>`, the tag written
  twice as upstream's prompt texts carry it, then the reference's codes and an EOS frame; all of them
  before the first turn when the dialogue's cast is known, `DialogueMemory.cast`), then the earlier
  turns (`[Sn]<|text_start|>text<|text_end|>`, codes, EOS), then the new turn's text frames. Text goes in as
  written; a turn over 80 words (150 characters with CJK) is split at sentence ends and each piece is a turn
  of its own. Each turn generates until EOS, at most 375 frames (30 s), at temperature 0.9. A spoken turn
  goes into the context as upstream puts it there: its audio resampled to 16 kHz and encoded again by the
  codec (`encode_speech`).
- **Monologue** (the pre-trained checkpoint, `llm_pretrain.pt`): text is normalised (`clean_text`) and
  split into pieces of at most ~400 bytes. A cloned voice speaks each piece as ONE segment that continues
  its reference: `[S1]<|text_start|>` + transcript minus its last character + "," + piece +
  `<|text_end|>`, then the reference's codes minus their last 2 frames and no EOS frame, so the model goes
  on speaking the rest of the text in that voice; at most 400 frames at temperature 0.75, and the first 2
  generated frames are dropped (upstream's "leading silence"). Without a cloned voice a piece is
  `[S1]<|text_start|>piece<|text_end|>` alone (a random timbre), at most 375 frames at temperature 0.75.

Where this engine departs from upstream, and why:

- Voice prompt codes are computed once per voice (`encode_reference`); upstream encodes the reference
  audio again on every call, with the same result.
- Upstream speaks a random-voice monologue in one generation and loses whatever does not fit in 30 s. Here
  it is split like a cloned one, and the pieces after the first clone the first piece's voice (it becomes
  the speaker's voice prompt), so long text is spoken whole in one voice.
- The context is a sliding window: where upstream refuses a dialogue prompt that would not leave room for
  375 frames within its 3,100-frame limit, the oldest turns are dropped, never the voice prompts.
- The model's framing and speaker tokens are removed from user text (`strip_control_tokens`), so text
  cannot end its own frame or switch the speaker.
- No torchaudio (it has no CPU wheel): the package `__init__` imports it through its top module, so only
  the `llm` and `codec` submodules are imported (see `_import_fireredtts2`), and audio is resampled by
  `resample`, the same band-limited sinc interpolation as `torchaudio.functional.resample`'s default. The
  text handling is our own (`fireredtts2_text`): the package's copy predates upstream HEAD's `clean_text`.
- The package's loaders are not used: `load_llm_model` silently falls back to random weights when the
  checkpoint is missing, `RedCodecInfer.from_pretrained` loads without `map_location` (a GPU-saved
  checkpoint fails on CPU) and hard-codes the Whisper-large-v3 size of its encoder. The same classes are
  built here from the directory's configs; `config_codec.json` may give the encoder's size in an optional
  `codec.ssl` section (tests use a tiny one), which upstream's configs do not have.
- A cloned monologue's pieces follow upstream's non-streaming class (the first 2 frames of every piece
  dropped, each piece decoded on its own); its streaming class drops them in the first piece only. Like the
  streaming class, and unlike the non-streaming one, a piece under 19 frames is not generated again (that
  would hold back 1.5 s of audio, and need never end for a piece that is short to say).
- Upstream has no dialogue on the pre-trained checkpoint: here each turn is a monologue in its speaker's
  voice (its stored voice, or the random voice of its first piece).

Settings may depart further (`FireRedTTS2Recipe`, PARLEY_TTS_FIREREDTTS2_*): all off by default.

One `FireRedTTS2Model` is one model copy with its own KV caches: only one thread may use it at a time
(the service keeps copies in a `parley.models.ModelPool`), and it starts no threads of its own.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import importlib.util
import io
import json
import logging
import math
import pickle
import sys
import threading
import types
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
import torch

from parley.pcm import Float32Array
from parley_tts.engines.base import Context, StoredVoice, UnknownVoice, UnspeakableText, Utterance, VoiceInfo
from parley_tts.engines.fireredtts2_batch import Sampling, SharedCopy
from parley_tts.engines.fireredtts2_graphs import GraphedFrameStep, batch_buckets
from parley_tts.engines.fireredtts2_text import (
    LANGUAGES,
    MONOLOGUE_PIECE_BYTES,
    clean_text,
    split_monologue,
    split_turn,
    strip_control_tokens,
)

if TYPE_CHECKING:
    from parley_tts.config import TtsSettings

log = logging.getLogger(__name__)

Codes = npt.NDArray[np.int64]  # (frames, codebooks) codebook indices

SPEAKERS = ("[S1]", "[S2]", "[S3]", "[S4]")
MONOLOGUE_SPEAKER = "[S1]"  # upstream's monologue always speaks as [S1]
# Upstream's limit on prompt + generated frames: longer sequences were never trained.
UPSTREAM_FRAME_LIMIT = 3100
CHECKPOINTS = ("pretrain", "posttrain")
TOKENIZER_DIR = "Qwen2.5-1.5B"
# Upstream hard-codes these for the codec's semantic encoder (Whisper-large-v3's encoder).
WHISPER_LARGE_V3 = {"embed_dim": 1280, "num_layers": 32, "num_heads": 20, "ffn_dim": 5120}
TEXT_START, TEXT_END = "<|text_start|>", "<|text_end|>"
# A cloned monologue continues its reference: upstream cuts the prompt's last 3 frames (the EOS frame and
# 2 frames of codes) and drops the first 2 frames it generates.
CONTINUATION_TRIM = 2
LEADING_FRAMES_DROPPED = 2


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


class MissingModelFiles(FileNotFoundError):
    """The models directory lacks files; `missing` names each (relative to the directory)."""

    def __init__(self, models_dir: Path, missing: list[str]) -> None:
        self.models_dir = models_dir
        self.missing = missing
        super().__init__(f"FireRedTTS2 models directory {models_dir} is missing: {', '.join(missing)}")


class ContextTooLong(ValueError):
    """The request does not fit in the model's frame limit even with every droppable segment dropped."""


# --- resampling ----------------------------------------------------------------------------------------

_SINC_ZEROS = 6  # zero crossings of the sinc on each side of the kernel
_ROLLOFF = 0.99  # the low-pass cut-off, as a fraction of the lower rate's Nyquist frequency


@functools.lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """Polyphase kernels (new, 1, taps) of a Hann-windowed sinc low-pass, and how far each reaches back."""
    cutoff = min(orig, new) * _ROLLOFF
    reach = math.ceil(_SINC_ZEROS * orig / cutoff)
    taps = torch.arange(-reach, reach + orig, dtype=dtype, device=device)[None, None] / orig
    phases = torch.arange(0, -new, -1, dtype=dtype, device=device)[:, None, None] / new
    t = ((phases + taps) * cutoff).clamp(-_SINC_ZEROS, _SINC_ZEROS)
    window = torch.cos(t * math.pi / _SINC_ZEROS / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), t.sin() / t)
    return sinc * (window * (cutoff / orig)), reach


def resample(audio: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """`audio` (..., time) from `orig` Hz to `new` Hz by band-limited sinc interpolation.

    The same computation as `torchaudio.functional.resample` with its defaults (Hann window, 6 zero
    crossings, roll-off 0.99), which upstream uses for prompts and for the context, so the codec encodes
    the same samples here as there. Returns `audio` itself when the rates are equal.
    """
    if orig <= 0 or new <= 0:
        raise ValueError(f"sample rates must be positive, not {orig} and {new}")
    if orig == new:
        return audio
    common = math.gcd(orig, new)
    orig, new = orig // common, new // common
    kernel, reach = _sinc_kernel(orig, new, audio.device, audio.dtype)
    shape = audio.shape
    flat = audio.reshape(-1, shape[-1])
    padded = torch.nn.functional.pad(flat, (reach, reach + orig))
    out = torch.nn.functional.conv1d(padded[:, None], kernel, stride=orig)
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)[:, : math.ceil(new * shape[-1] / orig)]
    return out.reshape(*shape[:-1], out.shape[-1])


# --- the model ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """One utterance in the model's context.

    `codes` are the codebook indices of its audio, shape (frames, 16), without an EOS frame: from
    `encode_reference` for a voice's reference recording, from `encode_speech` (or `last_codes`) for a
    spoken turn. `voice_prompt` marks a voice's reference: its text is written after a second speaker tag,
    as upstream's prompt transcripts carry one, and the sliding window never drops it. Put it first.
    """

    speaker: str  # "[S1]".."[S4]"
    text: str
    codes: Codes
    voice_prompt: bool = False


class _Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def __len__(self) -> int: ...


Frames = tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]  # (n, 17) tokens and which columns count


@dataclass
class _Stream:
    """One generation's state between frames: the next backbone input and the codec's streaming caches."""

    tokens: torch.Tensor  # (1, s, 17) what generate_frame gets next: the prompt, then the last frame
    mask: torch.Tensor  # (1, s, 17) which columns of `tokens` count
    positions: torch.Tensor  # (1, s)
    codec_cache: dict[str, torch.Tensor] = field(default_factory=dict)
    pending: torch.Tensor | None = None  # (1, 16) generated, not yet decoded (decoding runs one behind)
    shared_id: int | None = None  # its stream in the copy's `SharedCopy`, once it joined
    last: torch.Tensor | None = None  # (16,) the frame it made last (a shared copy feeds it back)
    audio: torch.Tensor | None = None  # the pending frame's audio, when a shared step decoded it already


class FireRedTTS2Model:
    """One FireRedTTS2 copy: backbone + decoder (the "LLM"), the codec and the text tokenizer.

    Use it from one thread at a time. `llm`, `codec` and `tokenizer` are the package's own objects;
    `checkpoint` says which LLM weights it holds, and so which recipe the synthesizer speaks with.
    """

    sample_rate = 24000  # of the audio `speak` yields
    frame_samples = 1920  # 80 ms at 24 kHz: one frame's audio
    reference_rate = 16000  # the codec encodes 16 kHz audio

    def __init__(
        self,
        llm: Model,
        codec: RedCodecInfer,
        tokenizer: _Tokenizer,
        frame_limit: int,
        checkpoint: str = "posttrain",
    ) -> None:
        if checkpoint not in CHECKPOINTS:
            raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, not {checkpoint!r}")
        self.llm = llm
        self.codec = codec
        self.tokenizer = tokenizer
        self.checkpoint = checkpoint
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
        self.last_complete = False
        # Set on the handles `share` makes: the copy they share, and this handle's own sampling noise.
        self.shared: SharedCopy | None = None
        self.generator: torch.Generator | None = None
        with torch.inference_mode():
            llm.setup_caches(1)

    def share(self, streams: int, cuda_graphs: bool = False) -> list[FireRedTTS2Model]:
        """`streams` handles on this one copy, each for one stream's thread, generating in one batched step a
        frame (`SharedCopy`); this object itself must not speak any more. One stream: itself, as it is,
        unless `cuda_graphs` asks for the frame step replayed as CUDA graphs (`GraphedFrameStep`).

        A handle draws its samples from a generator of its own (seeded from torch's global one here), so
        a stream's speech does not depend on who shares its steps.
        """
        if streams <= 1 and not cuda_graphs:
            return [self]
        shared = SharedCopy(self.llm, streams, self.codec, scratch_slot=cuda_graphs)
        if cuda_graphs:
            shared.batcher.fast_step = GraphedFrameStep(shared.batcher, batch_buckets(streams))
        handles = []
        for _ in range(streams):
            handle = copy.copy(self)  # the same llm, codec and tokenizer; its own results
            handle.shared = shared
            handle.generator = torch.Generator(device=self.device).manual_seed(int(torch.randint(2**62, (1,))))
            handles.append(handle)
        return handles

    def _codec_held(self) -> contextlib.AbstractContextManager[object]:
        """Held while this handle uses the codec of a shared copy (a copy of its own needs nothing)."""
        return self.shared.codec_lock if self.shared is not None else contextlib.nullcontext()

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
        post-trained one speaks dialogues and clones from context, the pre-trained one monologues),
        config_codec.json, codec.pt and the Qwen2.5-1.5B/ tokenizer. Anything missing is one
        `MissingModelFiles` naming every missing file. The LLM runs in bfloat16 on a CUDA device that
        supports it when `bf16`, else in float32 (always on CPU); the codec always in float32, as upstream.
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
        return cls(llm, codec, tokenizer, frame_limit, checkpoint)

    # --- audio to codes ------------------------------------------------------------------------------

    def encode_reference(self, audio: Float32Array, sample_rate: int = reference_rate) -> Codes:
        """The codes of a reference recording (mono float32), shape (frames, 16): compute once per voice.

        This runs the codec's encoders (a Whisper-large encoder on the real weights): seconds on a GPU,
        much longer on CPU. One frame per 80 ms of audio.
        """
        samples = np.asarray(audio, dtype=np.float32)
        if samples.ndim != 1 or samples.size == 0:
            raise ValueError(f"reference audio must be non-empty mono samples, got shape {samples.shape}")
        return self._encode(resample(torch.from_numpy(samples), sample_rate, self.reference_rate))

    def encode_speech(self, audio: Float32Array) -> Codes:
        """The codes of speech this model said (24 kHz), as upstream puts a spoken turn into the context:
        resampled to 16 kHz and encoded by the codec."""
        samples = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).to(self.device)
        return self._encode(resample(samples, self.sample_rate, self.reference_rate))

    @torch.inference_mode()
    def _encode(self, samples: torch.Tensor) -> Codes:
        with self._codec_held():
            tokens, _ = self.codec.encode(samples.unsqueeze(0).to(self.device))  # (1, 16, frames)
        return np.ascontiguousarray(tokens[0].T.cpu().numpy(), dtype=np.int64)

    # --- speaking ------------------------------------------------------------------------------------

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
    ) -> Generator[Float32Array]:
        """Speak `text` as `speaker` after `context` (upstream's `generate`): float32 mono chunks at 24 kHz.

        The prompt is each context segment (text frames, its codes, an EOS frame), then `text`'s frames;
        `text` goes in as given, less the model's control tokens. Chunk i is frame i's audio (1,920
        samples; the first is 360 shorter and the last 360 longer, the codec's overlap). It comes one frame
        late, as the codec needs to know whether a frame is the last. Generation ends at the model's EOS
        frame or after `max_frames` frames. `stop` is checked before every frame: once set, no further
        frame is generated and nothing more is yielded.

        If the prompt would leave fewer than `max_frames` frames within the frame limit (the limit itself
        excluded, as upstream), the oldest segments that are not voice prompts are dropped;
        `ContextTooLong` if even that is not enough. Afterwards `last_codes` holds the codes of exactly the
        chunks yielded (also when stopped or closed early), and `last_complete` whether generation ended
        by itself (EOS or the bound).
        """
        self._check(max_frames, temperature, top_k)
        tokens, mask = self._dialogue_prompt(text, speaker, context, max_frames)
        return self._frames(tokens, mask, stop, max_frames, temperature, top_k, 0)

    def continue_speech(
        self,
        text: str,
        prompt_codes: Codes,
        stop: threading.Event,
        *,
        max_frames: int,
        temperature: float = 0.75,
        top_k: int = 20,
    ) -> Generator[Float32Array]:
        """Go on from a reference (upstream's cloned monologue, `generate_single`): chunks as `speak` yields.

        The prompt is ONE segment: `[S1]<|text_start|>text<|text_end|>` with the reference's codes minus
        their last 2 frames and no EOS frame, so the model continues the reference's speech; `text` is the
        reference's transcript followed by what to say. The first 2 frames generated are not spoken (nor
        in `last_codes`); `max_frames` counts them.
        """
        self._check(max_frames, temperature, top_k)
        words = self._text_frames(MONOLOGUE_SPEAKER, text)
        if words is None:
            raise UnspeakableText(f"nothing to say in {text!r}")
        codes = self._checked_codes(prompt_codes)
        if len(codes) <= CONTINUATION_TRIM:
            raise ValueError(f"a reference to continue needs more than {CONTINUATION_TRIM} frames of codes")
        audio = self._audio_frames(codes[:-CONTINUATION_TRIM], eos=False)
        tokens, mask = np.concatenate([words[0], audio[0]]), np.concatenate([words[1], audio[1]])
        if len(tokens) + max_frames >= self.frame_limit:
            raise ContextTooLong(
                f"{len(tokens)} prompt frames + {max_frames} frames to generate reach the model's limit of "
                f"{self.frame_limit} frames"
            )
        return self._frames(tokens, mask, stop, max_frames, temperature, top_k, LEADING_FRAMES_DROPPED)

    def _check(self, max_frames: int, temperature: float, top_k: int) -> None:
        self.last_codes = None
        self.last_complete = False
        if max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, not {max_frames}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, not {temperature}")
        if not 1 <= top_k <= self.audio_vocab:
            raise ValueError(f"top_k must be in 1..{self.audio_vocab}, not {top_k}")

    def _frames(
        self,
        tokens: npt.NDArray[np.int64],
        mask: npt.NDArray[np.bool_],
        stop: threading.Event,
        max_frames: int,
        temperature: float,
        top_k: int,
        drop: int,
    ) -> Generator[Float32Array]:
        spoken: list[Codes] = []
        stream: _Stream | None = None
        try:
            stream = self._start(tokens, mask)
            for generated in range(max_frames):
                if stop.is_set():
                    return  # the pending frame's audio is not wanted any more
                frame = self._next_frame(stream, temperature, top_k)
                if frame is None:
                    break
                if stop.is_set():
                    return  # set while the frame was computed (from another thread): nothing more to yield
                if generated < drop:
                    continue
                if stream.pending is not None:
                    audio, codes = self._decode(stream, last=False)
                    spoken.append(codes)  # before the yield: a consumer may close us there
                    yield audio
                stream.pending = frame
            else:
                log.warning(
                    "FireRedTTS2 said no end of speech within its bound of %d frames: speech may be cut short",
                    max_frames,
                )
            self.last_complete = True
            if stream.pending is not None and not stop.is_set():
                audio, codes = self._decode(stream, last=True)
                spoken.append(codes)
                yield audio
        finally:
            self.last_codes = np.stack(spoken) if spoken else np.zeros((0, self.codebooks), dtype=np.int64)
            if self.shared is not None and stream is not None and stream.shared_id is not None:
                self.shared.leave(stream.shared_id)  # its slot takes the next stream

    def _dialogue_prompt(self, text: str, speaker: str, context: Sequence[Segment], max_frames: int) -> Frames:
        """The frames to prefill: the context that fits (oldest non-prompt segments dropped first) + the text."""
        if speaker not in SPEAKERS:
            raise ValueError(f"speaker must be one of {SPEAKERS}, not {speaker!r}")
        request = self._text_frames(speaker, text)
        if request is None:
            raise UnspeakableText(f"nothing to say in {text!r}")
        parts = [self._segment_frames(segment) for segment in context]
        # Upstream refuses a prompt of (limit - frames to generate) frames or more.
        budget = self.frame_limit - max_frames - 1 - len(request[0])
        pinned = sum(len(p[0]) for p, s in zip(parts, context, strict=True) if s.voice_prompt)
        if pinned > budget:
            raise ContextTooLong(
                f"{len(request[0])} text frames + {max_frames} frames to generate + {pinned} frames of voice "
                f"prompt reach the model's limit of {self.frame_limit} frames"
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

    def _text_frames(self, speaker: str, text: str, tag_twice: bool = False) -> Frames | None:
        """`[Sn]<|text_start|>text<|text_end|>`, one token per frame in the last column; None if no text.

        The text goes in as given, less the model's framing and speaker tokens (which would end the text
        early or switch the speaker). `tag_twice` writes the speaker's tag again at the start of the text,
        as upstream's voice prompt transcripts carry it (`[S1]<|text_start|>[S1]transcript<|text_end|>`).
        """
        text = strip_control_tokens(text)
        if not text.strip():
            return None
        ids = self.tokenizer.encode(speaker + TEXT_START + (speaker if tag_twice else "") + text + TEXT_END)
        frames = np.zeros((len(ids), self.codebooks + 1), dtype=np.int64)
        frames[:, -1] = ids
        mask = np.zeros(frames.shape, dtype=np.bool_)
        mask[:, -1] = True
        return frames, mask

    def _checked_codes(self, codes: Codes) -> Codes:
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[0] == 0 or codes.shape[1] != self.codebooks:
            raise ValueError(f"segment codes must have shape (frames >= 1, {self.codebooks}), not {codes.shape}")
        if codes.min() < 0 or codes.max() >= self.audio_vocab:
            raise ValueError(f"segment codes must lie in 0..{self.audio_vocab - 1}")
        return codes

    def _audio_frames(self, codes: Codes, eos: bool) -> Frames:
        """Codes as audio frames (the text column empty), with the all-zero EOS frame after them if `eos`."""
        audio = np.zeros((len(codes) + int(eos), self.codebooks + 1), dtype=np.int64)
        audio[: len(codes), :-1] = codes
        mask = np.zeros(audio.shape, dtype=np.bool_)
        mask[:, :-1] = True
        return audio, mask

    def _segment_frames(self, segment: Segment) -> Frames:
        """A context segment: its text frames, its audio frames, then the EOS frame (all-zero codes)."""
        if segment.speaker not in SPEAKERS:
            raise ValueError(f"segment speaker must be one of {SPEAKERS}, not {segment.speaker!r}")
        codes = self._checked_codes(segment.codes)
        text = self._text_frames(segment.speaker, segment.text, tag_twice=segment.voice_prompt)
        if text is None:
            raise ValueError(f"context segment without text: {segment.text!r}")
        audio = self._audio_frames(codes, eos=True)
        return np.concatenate([text[0], audio[0]]), np.concatenate([text[1], audio[1]])

    @torch.inference_mode()
    def _start(self, tokens: npt.NDArray[np.int64], mask: npt.NDArray[np.bool_]) -> _Stream:
        if self.shared is None:
            self.llm.reset_caches()
        return _Stream(
            tokens=torch.from_numpy(tokens).unsqueeze(0).to(self.device),
            mask=torch.from_numpy(mask).unsqueeze(0).to(self.device),
            positions=torch.arange(len(tokens), device=self.device).unsqueeze(0),
        )

    @torch.inference_mode()
    def _next_frame(self, stream: _Stream, temperature: float, top_k: int) -> torch.Tensor | None:
        """One frame (1, 16) from the backbone + decoder, the stream advanced past it; None at EOS."""
        if self.shared is not None:
            return self._next_shared_frame(stream, temperature, top_k)
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

    def _next_shared_frame(self, stream: _Stream, temperature: float, top_k: int) -> torch.Tensor | None:
        """The same from a shared copy: the prompt prefilled on joining, then one batched step a frame."""
        assert self.shared is not None
        if stream.shared_id is None:
            sampling = Sampling(temperature, top_k, self.generator)
            stream.shared_id, made = self.shared.join(stream.tokens[0], stream.mask[0], sampling)
        else:
            assert stream.last is not None
            # The step also decodes the pending frame: its audio is what `_decode` hands out next.
            pending = None if stream.pending is None else stream.pending[0].clamp(max=self._codec_max)
            made, stream.audio = self.shared.next_frame_and_audio(stream.shared_id, stream.last, pending)
        stream.last = made
        frame = made.long().unsqueeze(0)
        return frame if bool(frame.any()) else None

    @torch.inference_mode()
    def _decode(self, stream: _Stream, last: bool) -> tuple[Float32Array, Codes]:
        """The pending frame's audio (the codec's streaming decoder, exactly one frame per call) and codes."""
        assert stream.pending is not None
        frame = stream.pending.clamp(max=self._codec_max).unsqueeze(-1)  # (1, 16, 1)
        if self.shared is None:
            audio, stream.codec_cache = self.codec.decode_one_token(frame, stream.codec_cache, last_token=last)
            decoded = audio[0]
        elif stream.audio is not None:  # decoded by the step that made the next frame, with this `last`
            decoded = stream.audio
        else:  # the last frame at the bound: no step comes after it
            assert stream.shared_id is not None
            decoded = self.shared.decode(stream.shared_id, frame[0, :, 0], last)
        stream.pending = stream.audio = None
        samples = np.ascontiguousarray(decoded.float().cpu().numpy(), dtype=np.float32)
        return samples, frame[0, :, 0].cpu().numpy().astype(np.int64)


def _heard(frames: Generator[Float32Array, None, None], heard: list[Float32Array]) -> Iterator[Float32Array]:
    """The model's audio as it comes, each chunk also kept in `heard`; the model's generator is closed
    however this ends (a cancelled call stops the model between frames)."""
    try:
        for chunk in frames:
            heard.append(chunk)
            yield chunk
    finally:
        frames.close()


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


@dataclass(frozen=True)
class FireRedTTS2Recipe:
    """How the synthesizer feeds the model. The defaults are upstream's; each switch departs from it.

    - `max_frames`, `temperature`: a dialogue turn (and a random-voice monologue piece: `max_frames` with
      `monologue_temperature`). Upstream: 375 frames (30 s), 0.9.
    - `monologue_max_frames`, `monologue_temperature`: a cloned monologue piece. Upstream: 400, 0.75.
    - `top_k`: upstream's 20 for both.
    - `context_codes`: a spoken turn goes into the context as the codes the model generated, not as its
      audio resampled and encoded again. Saves a codec encode (a Whisper-large encoder) per turn and the
      audio round trip; but the model was tuned on upstream's encoded context.
    - `split_long_sentences`: a dialogue piece still over upstream's limit (one sentence of more than 80
      words or 150 CJK characters, which upstream leaves whole and the 375-frame bound may cut short) is
      cut at clause marks, then between words.
    """

    max_frames: int = 375
    temperature: float = 0.9
    monologue_max_frames: int = 400
    monologue_temperature: float = 0.75
    top_k: int = 20
    context_codes: bool = False
    split_long_sentences: bool = False

    @classmethod
    def from_settings(cls, settings: TtsSettings) -> FireRedTTS2Recipe:
        return cls(
            max_frames=settings.fireredtts2_max_frames,
            temperature=settings.fireredtts2_temperature,
            monologue_max_frames=settings.fireredtts2_monologue_max_frames,
            monologue_temperature=settings.fireredtts2_monologue_temperature,
            top_k=settings.fireredtts2_top_k,
            context_codes=settings.fireredtts2_context_codes,
            split_long_sentences=settings.fireredtts2_split_long_sentences,
        )


def _speaker_tag(speaker: int) -> str:
    tag = f"[S{speaker}]"
    if tag not in SPEAKERS:
        raise ValueError(f"speaker must be 1..{len(SPEAKERS)}, not {speaker}")
    return tag


@dataclass
class DialogueMemory:
    """What a FireRedTTS2 conversation or dialogue remembers: its voice prompts and spoken turns, oldest first.

    The voice prompts come first, in speaker order: a stored voice's reference (its transcript and prompt
    codes), put in when the dialogue's cast is known (`cast`) or else when that speaker first speaks in that
    voice; with the pre-trained checkpoint a random voice's prompt is its first monologue piece. Turns
    (dialogue recipe only) follow: what the model said, as upstream puts it into the context. The sliding
    window in `speak` drops the oldest turns, never the prompts.
    """

    segments: list[Segment] = field(default_factory=list)
    prompts: dict[str, str] = field(default_factory=dict)  # speaker tag -> stored voice id, or RANDOM_VOICE

    def cast(self, voices: Mapping[int, str | StoredVoice]) -> None:
        """Every speaker's voice (speaker number -> voice) before the first turn, as upstream's dialogue puts
        every speaker's prompt before its first turn. Touches no model."""
        for speaker in sorted(voices):
            self.use_voice(_speaker_tag(speaker), voices[speaker])

    def use_voice(self, speaker: str, voice: str | StoredVoice) -> None:
        """`speaker` speaks in `voice` from now on: its prompt is put in, or its old voice's context goes."""
        if isinstance(voice, StoredVoice):
            if self.prompts.get(speaker) != voice.id:
                self.forget_speaker(speaker)  # what it said in another voice would pull towards that voice
                self.add_prompt(
                    speaker, voice.id, Segment(speaker, voice.transcript, codes_from_bytes(voice.codes), True)
                )
        elif voice == RANDOM_VOICE:
            if self.prompts.get(speaker, RANDOM_VOICE) != RANDOM_VOICE:
                self.forget_speaker(speaker)
        else:
            raise UnknownVoice(voice)

    def add_prompt(self, speaker: str, voice_id: str, segment: Segment) -> None:
        position = 0
        while (
            position < len(self.segments)
            and self.segments[position].voice_prompt
            and SPEAKERS.index(self.segments[position].speaker) < SPEAKERS.index(speaker)
        ):
            position += 1
        self.segments.insert(position, segment)
        self.prompts[speaker] = voice_id

    def prompt_of(self, speaker: str) -> Segment | None:
        return next((s for s in self.segments if s.voice_prompt and s.speaker == speaker), None)

    def forget_speaker(self, speaker: str) -> None:
        """A speaker changes voice: its prompt and its earlier turns leave the context."""
        self.segments = [segment for segment in self.segments if segment.speaker != speaker]
        self.prompts.pop(speaker, None)

    def forget_beyond(self, frame_limit: int) -> None:
        """Keep what is stored bounded: turns that could never fit in the window again are dropped now."""
        total = 0
        for index in range(len(self.segments) - 1, -1, -1):
            segment = self.segments[index]
            total += len(segment.codes) + len(segment.text) + 4
            if total > frame_limit and not segment.voice_prompt:
                del self.segments[index]


class FireRedTTS2Synthesizer:
    """The `SpeechSynthesizer` over one `FireRedTTS2Model` copy.

    It has one built-in voice, random timbre (`fireredtts2-random`: the model picks a voice, and the
    context keeps it), and speaks any stored voice from its prompt codes. The model's checkpoint picks the
    recipe: post-trained, dialogue (every request is turns of a dialogue, a conversation's replies too);
    pre-trained, monologue (each utterance spoken from its speaker's voice prompt alone). Speed is the
    model's own: FireRedTTS2 has no rate control, so only 1.0 is accepted.

    `recipe` defaults to the service's settings (PARLEY_TTS_FIREREDTTS2_*); `max_frames`, `temperature`
    and `top_k`, when given, override it.
    """

    engine = "fireredtts2"
    cloning = True
    # Upstream gives the model digits as written; in English and Chinese, its authors' own languages,
    # so do we (parity with their reference). Elsewhere they are written out in the text's language.
    numbers_written_out = frozenset(LANGUAGES) - {"en", "zh"}
    # Upstream speaks whole sentences, and a random voice's first piece becomes its voice prompt:
    # a reply's early few-word pieces are joined to what follows them (not measured otherwise).
    speaks_phrases = False
    sample_rate = FireRedTTS2Model.sample_rate

    def __init__(
        self,
        model: FireRedTTS2Model,
        max_frames: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        recipe: FireRedTTS2Recipe | None = None,
    ) -> None:
        recipe = recipe or FireRedTTS2Recipe()  # upstream's recipe; the service passes its settings'
        self.recipe = dataclasses.replace(
            recipe,
            max_frames=recipe.max_frames if max_frames is None else max_frames,
            temperature=recipe.temperature if temperature is None else temperature,
            top_k=recipe.top_k if top_k is None else top_k,
        )
        self.model = model

    def voices(self) -> list[VoiceInfo]:
        return [VoiceInfo(RANDOM_VOICE, "FireRedTTS2 random timbre", ",".join(LANGUAGES), self.sample_rate)]

    def new_context(self) -> DialogueMemory:
        return DialogueMemory()

    def synthesize(self, utterance: Utterance, context: Context) -> Iterator[Float32Array]:
        if not isinstance(context, DialogueMemory):
            raise TypeError(f"a FireRedTTS2 context is a DialogueMemory, not {type(context).__name__}")
        if abs(utterance.speed - 1.0) > 1e-6:
            raise UnspeakableText("the fireredtts2 engine speaks at its own rate: speed must be 1.0")
        speaker = _speaker_tag(utterance.speaker)
        context.use_voice(speaker, utterance.voice)
        if self.model.checkpoint == "pretrain":
            yield from self._monologue(utterance.text, speaker, context)
        else:
            yield from self._dialogue(utterance.text, speaker, context)

    def encode_reference(self, audio_16k: Float32Array, transcript: str) -> bytes:
        if not transcript.strip():
            raise ValueError("a FireRedTTS2 voice needs the transcript of its reference")
        return codes_to_bytes(self.model.encode_reference(audio_16k, FireRedTTS2Model.reference_rate))

    # --- dialogue (post-trained checkpoint) ------------------------------------------------------------

    def _dialogue(self, text: str, speaker: str, memory: DialogueMemory) -> Iterator[Float32Array]:
        pieces = split_turn(strip_control_tokens(text), split_long_sentences=self.recipe.split_long_sentences)
        pieces = [piece for piece in pieces if piece]
        if not pieces:
            raise UnspeakableText(f"nothing to say in {text!r}")
        for piece in pieces:
            yield from self._turn(piece, speaker, memory)

    def _turn(self, text: str, speaker: str, memory: DialogueMemory) -> Iterator[Float32Array]:
        """One turn after the memory's context; what was heard of it goes into the context."""
        recipe = self.recipe
        heard: list[Float32Array] = []
        stop = threading.Event()  # the pool stops us by closing this generator between frames
        frames = self.model.speak(
            text,
            speaker,
            memory.segments,
            stop,
            max_frames=recipe.max_frames,
            temperature=recipe.temperature,
            top_k=recipe.top_k,
        )
        try:
            yield from _heard(frames, heard)
        finally:
            spoken = self.model.last_codes
            if spoken is not None and len(spoken):
                memory.segments.append(Segment(speaker, text, self._context_codes(spoken, heard)))
                memory.forget_beyond(self.model.frame_limit)

    def _context_codes(self, spoken: Codes, heard: list[Float32Array]) -> Codes:
        if self.recipe.context_codes:
            return spoken
        return self.model.encode_speech(np.concatenate(heard))

    # --- monologue (pre-trained checkpoint) ------------------------------------------------------------

    def _monologue(self, text: str, speaker: str, memory: DialogueMemory) -> Iterator[Float32Array]:
        cleaned = clean_text(strip_control_tokens(text))
        pieces = [clean_text(piece) for piece in split_monologue(cleaned, MONOLOGUE_PIECE_BYTES)]
        pieces = [piece for piece in pieces if piece]
        if not pieces:
            raise UnspeakableText(f"nothing to say in {text!r}")
        for piece in pieces:
            prompt = memory.prompt_of(speaker)
            if prompt is None:
                yield from self._random_piece(piece, speaker, memory)
            else:
                yield from self._cloned_piece(piece, prompt)

    def _random_piece(self, text: str, speaker: str, memory: DialogueMemory) -> Iterator[Float32Array]:
        """A piece in a random timbre; once spoken whole, it is the speaker's voice prompt from then on."""
        recipe = self.recipe
        heard: list[Float32Array] = []
        stop = threading.Event()
        frames = self.model.speak(
            text,
            MONOLOGUE_SPEAKER,
            [],
            stop,
            max_frames=recipe.max_frames,
            temperature=recipe.monologue_temperature,
            top_k=recipe.top_k,
        )
        try:
            yield from _heard(frames, heard)
        finally:
            spoken = self.model.last_codes
            if self.model.last_complete and spoken is not None and len(spoken) > CONTINUATION_TRIM:
                codes = self._context_codes(spoken, heard)
                memory.add_prompt(speaker, RANDOM_VOICE, Segment(speaker, text, codes, voice_prompt=True))

    def _cloned_piece(self, text: str, prompt: Segment) -> Iterator[Float32Array]:
        """A piece that continues the voice prompt: its transcript (less its last character) + "," + text."""
        recipe = self.recipe
        transcript = clean_text(strip_control_tokens(prompt.text))
        yield from self.model.continue_speech(
            transcript[:-1] + "," + text,
            prompt.codes,
            threading.Event(),
            max_frames=recipe.monologue_max_frames,
            temperature=recipe.monologue_temperature,
            top_k=recipe.top_k,
        )
