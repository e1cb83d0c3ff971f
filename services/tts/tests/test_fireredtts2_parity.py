"""The engine feeds, splits, bounds and stops FireRedTTS2 exactly as upstream's own inference code does.

On the tiny random weights of tiny_fireredtts2.py (with a 3,100-frame backbone, upstream's limit), the
installed package's reference class (`fireredtts2.fireredtts2.FireRedTTS2`, `generate_monologue` and
`generate_dialogue`) and this engine run with the same weights and seeds, and must produce identical
prompts (every prefill the backbone gets), identical codes and identical audio.

How the reference is run here:

- Its top module imports torchaudio, which has no CPU build here: a stub stands in, whose `load` reads the
  reference WAV with soundfile and whose `functional.resample` is the engine's `resample` (the same
  computation as torchaudio's default resampler, pinned against torchaudio's own numbers in
  test_fireredtts2.py), so both sides resample the same samples the same way.
- Its codec loader hard-codes a Whisper-large encoder: it is replaced by one that builds the tiny codec
  from the directory (the LLM and tokenizer load with the package's own loaders).
- Random weights never say end of speech, so the same end-of-speech schedule wraps both sides'
  `generate_frame`: generation k returns the all-zero EOS frame after `lengths[k]` frames. Upstream's
  bounds (375/400 frames) are therefore never reached here; test_fireredtts2.py tests the bounds.
- Where upstream HEAD (404f3f6) differs from the PyPI package (tts-webui-fireredtts2 0.1.0), the reference
  follows HEAD: `clean_text` drops “ ” (the package turns them into an apostrophe), and audio is decoded
  frame by frame with the codec's streaming decoder, as HEAD's streaming class `FireRedTTS2_Stream` does
  (the package's class decodes at once, which agrees to ~1e-7, not bit for bit; checked below).
- For a cloned monologue this engine follows the non-streaming class, which drops the first 2 frames of
  every piece and decodes each piece on its own; HEAD's streaming class drops them only in the first piece
  and decodes across pieces, and neither streams nor can retry, as the non-streaming class does, a piece
  under 19 frames (the schedules here are longer, so the reference never retries).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import torch

from parley_tts.engines.base import StoredVoice, Utterance
from parley_tts.engines.fireredtts2 import (
    RANDOM_VOICE,
    UPSTREAM_FRAME_LIMIT,
    FireRedTTS2Model,
    FireRedTTS2Recipe,
    FireRedTTS2Synthesizer,
    RedCodecInfer,
    build_codec,
    codes_from_bytes,
    resample,
)
from services.tts.tests.tiny_fireredtts2 import CODEBOOKS, CODEC_SECTIONS, write_models_dir

TRANSCRIPT_A = "I am the first voice, reading this."
TRANSCRIPT_B = "And I am the second one."


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models_dir(tmp_path_factory.mktemp("fireredtts2-parity"), frame_limit=UPSTREAM_FRAME_LIMIT)


def _torchaudio_stub() -> types.ModuleType:
    def load(path: str) -> tuple[torch.Tensor, int]:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
        return torch.from_numpy(np.ascontiguousarray(data.T)), rate

    stub = types.ModuleType("torchaudio")
    stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)  # transformers looks modules up by spec
    functional = types.ModuleType("torchaudio.functional")
    functional.resample = resample  # type: ignore[attr-defined]
    stub.load = load  # type: ignore[attr-defined]
    stub.functional = functional  # type: ignore[attr-defined]
    return stub


def _tiny_codec(config_path: str, checkpoint_path: str) -> RedCodecInfer:
    codec = build_codec(CODEC_SECTIONS)
    codec.load_state_dict(torch.load(checkpoint_path, map_location="cpu", weights_only=True)["generator"])
    return RedCodecInfer(codec)


def head_clean_text_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    """Upstream HEAD's `clean_text` drops the curly double quotes; the PyPI package's maps them to "'"."""
    from fireredtts2.utils import spliter

    monkeypatch.setitem(spliter.SYMBOLS_MAPPING, "“", "")
    monkeypatch.setitem(spliter.SYMBOLS_MAPPING, "”", "")


@pytest.fixture(scope="module")
def upstream() -> Iterator[types.ModuleType]:
    """The package's fireredtts2/fireredtts2.py, imported with the torchaudio stub, as HEAD behaves."""
    package = sys.modules["fireredtts2"]  # the engine's bare package module (no torchaudio __init__)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "torchaudio", _torchaudio_stub())
        module = importlib.import_module("fireredtts2.fireredtts2")
        try:
            patch.setattr(module.RedCodecInfer, "from_pretrained", staticmethod(_tiny_codec))
            head_clean_text_mapping(patch)
            yield module
        finally:
            sys.modules.pop("fireredtts2.fireredtts2", None)
            if hasattr(package, "fireredtts2"):
                delattr(package, "fireredtts2")


class StreamingDecode:
    """The reference's codec, decoding a generation frame by frame as HEAD's `FireRedTTS2_Stream` does."""

    def __init__(self, codec: RedCodecInfer) -> None:
        self.codec = codec

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:  # (1, 16, frames) -> (1, samples)
        cache: dict[str, torch.Tensor] = {}
        chunks = []
        for i in range(tokens.shape[-1]):
            chunk, cache = self.codec.decode_one_token(
                tokens[..., i : i + 1], cache, last_token=i == tokens.shape[-1] - 1
            )
            chunks.append(chunk)
        return torch.cat(chunks, dim=-1)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.codec, name)


@pytest.fixture(scope="module")
def reference(upstream: types.ModuleType, models_dir: Path) -> dict[str, Any]:
    """The package's class for each checkpoint, as upstream builds it (gen_type picks the checkpoint)."""
    references = {
        "posttrain": upstream.FireRedTTS2(str(models_dir), "dialogue", "cpu"),
        "pretrain": upstream.FireRedTTS2(str(models_dir), "monologue", "cpu"),
    }
    for instance in references.values():
        instance._audio_tokenizer = StreamingDecode(instance._audio_tokenizer)
    return references


@pytest.fixture(scope="module")
def engine(models_dir: Path) -> dict[str, FireRedTTS2Synthesizer]:
    """The engine on each checkpoint, with upstream's recipe (the defaults)."""
    return {
        checkpoint: FireRedTTS2Synthesizer(
            FireRedTTS2Model.load(models_dir, "cpu", checkpoint=checkpoint), recipe=FireRedTTS2Recipe()
        )
        for checkpoint in ("posttrain", "pretrain")
    }


def reference_audio(seed: int, seconds: float) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * np.sin(2 * np.pi * (150 + 50 * seed) * t) + 0.05 * noise).astype(np.float32)


@pytest.fixture(scope="module")
def voices(engine: dict[str, FireRedTTS2Synthesizer], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two stored voices (codes from the engine's CreateVoice path) and their references as WAV files."""
    folder = tmp_path_factory.mktemp("references")
    made: dict[str, Any] = {}
    for name, seed, seconds, transcript in (("a", 1, 1.5, TRANSCRIPT_A), ("b", 2, 2.0, TRANSCRIPT_B)):
        audio = reference_audio(seed, seconds)
        path = folder / f"{name}.wav"
        soundfile.write(path, audio, 16000, subtype="FLOAT")
        codes = engine["posttrain"].encode_reference(audio, transcript)
        made[name] = StoredVoice(name, transcript, codes)
        made[f"{name}.wav"] = str(path)
    return made


class Schedule:
    """Wraps a model's `generate_frame`: EOS after `lengths[k]` frames of generation k; records every
    generation's prompt (the prefill: tokens and mask) and codes."""

    def __init__(self, llm: Any, lengths: list[int]) -> None:
        self.llm, self.inner, self.lengths = llm, llm.generate_frame, lengths
        self.prompts: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.codes: list[list[torch.Tensor]] = []

    def __call__(self, tokens: torch.Tensor, mask: torch.Tensor, *args: Any) -> torch.Tensor:
        if tokens.shape[1] > 1:  # a prefill starts a generation
            self.prompts.append((tokens[0].clone(), mask[0].clone()))
            self.codes.append([])
        if len(self.codes[-1]) >= self.lengths[len(self.prompts) - 1]:
            return torch.zeros((1, CODEBOOKS), dtype=torch.int)
        frame: torch.Tensor = self.inner(tokens, mask, *args)
        self.codes[-1].append(frame.clone())
        return frame

    def run(self, seed: int, speak: Callable[[], np.ndarray]) -> np.ndarray:
        self.llm.generate_frame = self
        torch.manual_seed(seed)
        try:
            return np.asarray(speak(), dtype=np.float32).reshape(-1)
        finally:
            del self.llm.generate_frame  # the class's own method again


def assert_same_run(
    ours: FireRedTTS2Synthesizer,
    speak: Callable[[], np.ndarray],
    theirs: Any,
    upstream_speak: Callable[[], Any],
    lengths: list[int],
    seed: int,
) -> tuple[Schedule, np.ndarray]:
    mine = Schedule(ours.model.llm, lengths)
    audio = mine.run(seed, speak)
    reference = Schedule(theirs._model, lengths)
    expected = reference.run(seed, lambda: upstream_speak().numpy())

    assert len(mine.prompts) == len(reference.prompts) == len(lengths)  # one generation per piece / turn
    for (tokens, mask), (want_tokens, want_mask) in zip(mine.prompts, reference.prompts, strict=True):
        assert torch.equal(tokens, want_tokens) and torch.equal(mask, want_mask)
    for codes, want in zip(mine.codes, reference.codes, strict=True):
        assert len(codes) == len(want) and all(torch.equal(a, b) for a, b in zip(codes, want, strict=True))
    assert audio.shape == expected.shape and np.array_equal(audio, expected)
    return mine, audio


def spoken(
    synthesizer: FireRedTTS2Synthesizer, *utterances: Utterance, cast: dict[int, Any] | None = None
) -> np.ndarray:
    memory = synthesizer.new_context()
    if cast:
        memory.cast(cast)
    return np.concatenate([chunk for u in utterances for chunk in synthesizer.synthesize(u, memory)])


def text_of(synthesizer: FireRedTTS2Synthesizer, tokens: torch.Tensor, mask: torch.Tensor) -> str:
    column = tokens[mask[:, -1], -1].tolist()
    return str(synthesizer.model.tokenizer.decode(column))  # type: ignore[attr-defined]


def test_random_voice_monologue(engine: dict[str, FireRedTTS2Synthesizer], reference: dict[str, Any]) -> None:
    ours, theirs = engine["pretrain"], reference["pretrain"]
    text = "Hello there, “my friend”: how are you today?"
    run, audio = assert_same_run(
        ours,
        lambda: spoken(ours, Utterance(text, RANDOM_VOICE)),
        theirs,
        lambda: theirs.generate_monologue(text),
        lengths=[60],  # more frames than characters: a per-character bound would cut it
        seed=1,
    )
    # HEAD's clean_text: quotes dropped, ":" made ","; one segment, no context.
    assert text_of(ours, *run.prompts[0]) == "[S1]<|text_start|>Hello there, my friend, how are you today?<|text_end|>"
    assert audio.size == 60 * 1920


def test_cloned_monologue(
    engine: dict[str, FireRedTTS2Synthesizer], reference: dict[str, Any], voices: dict[str, Any]
) -> None:
    ours, theirs = engine["pretrain"], reference["pretrain"]
    text = "Say this in my voice, please."
    run, audio = assert_same_run(
        ours,
        lambda: spoken(ours, Utterance(text, voices["a"])),
        theirs,
        lambda: theirs.generate_monologue(text, prompt_wav=voices["a.wav"], prompt_text=TRANSCRIPT_A),
        lengths=[24],
        seed=2,
    )
    tokens, mask = run.prompts[0]
    # One segment continuing the reference: transcript less its last character, ",", the text; then the
    # reference's codes less their last 2 frames, and no EOS frame.
    assert text_of(ours, tokens, mask) == f"[S1]<|text_start|>{TRANSCRIPT_A[:-1]},{text}<|text_end|>"
    codes = codes_from_bytes(voices["a"].codes)
    audio_rows = tokens[mask[:, 0]][:, :-1].numpy()
    np.testing.assert_array_equal(audio_rows, codes[:-2])
    assert audio.size == (24 - 2) * 1920  # the first 2 generated frames are not spoken


def test_cloned_two_speaker_dialogue(
    engine: dict[str, FireRedTTS2Synthesizer], reference: dict[str, Any], voices: dict[str, Any]
) -> None:
    ours, theirs = engine["posttrain"], reference["posttrain"]
    turns = [(1, "Hi there! How are “you”?"), (2, "Yes, sure."), (1, "Fine [laughs], thanks.")]
    by_speaker = {1: voices["a"], 2: voices["b"]}
    run, audio = assert_same_run(
        ours,
        lambda: spoken(ours, *(Utterance(t, by_speaker[s], speaker=s) for s, t in turns), cast=by_speaker),
        theirs,
        lambda: theirs.generate_dialogue(
            [f"[S{s}]{t}" for s, t in turns],
            prompt_wav_list=[voices["a.wav"], voices["b.wav"]],
            prompt_text_list=["[S1]" + TRANSCRIPT_A, "[S2]" + TRANSCRIPT_B],
        ),
        lengths=[12, 30, 9],  # turn 2 runs past a one-frame-per-character bound (10 characters)
        seed=3,
    )
    first = text_of(ours, *run.prompts[0])
    # Both speakers' prompts (tag written twice) before the first turn; text as written.
    assert first == (
        f"[S1]<|text_start|>[S1]{TRANSCRIPT_A}<|text_end|>[S2]<|text_start|>[S2]{TRANSCRIPT_B}<|text_end|>"
        "[S1]<|text_start|>Hi there! How are “you”?<|text_end|>"
    )
    # The first turn goes into the second turn's context as its audio, resampled and encoded again.
    first_turn_audio = audio[: 12 * 1920]
    encoded = ours.model.encode_speech(first_turn_audio)
    tokens, mask = run.prompts[1]
    generated = torch.cat(run.codes[0]).numpy()
    assert not np.array_equal(encoded, generated)  # (so the test tells the two apart)
    audio_rows = tokens[mask[:, 0]][:, :-1].numpy()
    np.testing.assert_array_equal(audio_rows[-len(encoded) - 1 : -1], encoded)
    assert audio.size == (12 + 30 + 9) * 1920


def test_long_dialogue_turn_is_split(engine: dict[str, FireRedTTS2Synthesizer], reference: dict[str, Any]) -> None:
    ours, theirs = engine["posttrain"], reference["posttrain"]
    text = " ".join(f"Sentence number {i} has a handful of words in it." for i in range(12))  # 120 words
    run, audio = assert_same_run(
        ours,
        lambda: spoken(ours, Utterance(text, RANDOM_VOICE)),
        theirs,
        lambda: theirs.generate_dialogue(["[S1]" + text]),
        lengths=[10, 11],  # two pieces of at most 80 words, the second after the first as context
        seed=4,
    )
    # Upstream's split: whole sentences, at most 80 words a piece; the first piece is the second's context.
    sentences = [f"Sentence number {i} has a handful of words in it." for i in range(12)]
    first, second = " ".join(sentences[:8]), " ".join(sentences[8:])
    assert text_of(ours, *run.prompts[0]) == f"[S1]<|text_start|>{first}<|text_end|>"
    assert (
        text_of(ours, *run.prompts[1]) == f"[S1]<|text_start|>{first}<|text_end|>[S1]<|text_start|>{second}<|text_end|>"
    )
    assert audio.size == (10 + 11) * 1920  # piece after piece, no gap


def test_long_cloned_monologue_is_split(
    engine: dict[str, FireRedTTS2Synthesizer], reference: dict[str, Any], voices: dict[str, Any]
) -> None:
    ours, theirs = engine["pretrain"], reference["pretrain"]
    sentences = ["This is a sentence of a long text, read in a cloned voice.", "It goes on (and on) with more words!"]
    text = " ".join(sentences * 6)  # 570 bytes: two pieces of at most 400
    run, audio = assert_same_run(
        ours,
        lambda: spoken(ours, Utterance(text, voices["a"])),
        theirs,
        lambda: theirs.generate_monologue(text, prompt_wav=voices["a.wav"], prompt_text=TRANSCRIPT_A),
        lengths=[22, 21],
        seed=5,
    )
    # Upstream's pieces (HEAD's clean_text drops the brackets), each continuing the reference on its own.
    pieces = [text_of(ours, *prompt).removeprefix(f"[S1]<|text_start|>{TRANSCRIPT_A[:-1]},") for prompt in run.prompts]
    pieces = [piece.removesuffix("<|text_end|>") for piece in pieces]
    assert all(len(piece.encode()) <= 400 for piece in pieces)
    assert " ".join(pieces) == text.replace("(", "").replace(")", "")  # cut between two sentences
    assert audio.size == (22 - 2 + 21 - 2) * 1920


def test_streaming_decode_agrees_with_one_shot_decode(
    engine: dict[str, FireRedTTS2Synthesizer], reference: dict[str, Any]
) -> None:
    """Why the reference decodes frame by frame: the package's one-shot decode is the same to float rounding."""
    codec = reference["posttrain"]._audio_tokenizer
    codes = torch.randint(1, 32, (1, CODEBOOKS, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        stream = codec.decode(codes)
        one_shot = codec.codec.decode(codes)
    torch.testing.assert_close(stream, one_shot, atol=1e-5, rtol=0)
