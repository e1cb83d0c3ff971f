"""The FireRedTTS2 engine core on a tiny random-weight model (tiny_fireredtts2.py) on CPU.

Random weights say nothing about speech quality; these tests pin down what the engine feeds the model
(frames, speaker tags, prompt codes, the context window), how it streams, how it stops, and where it
departs from upstream's recipe (test_fireredtts2_parity.py runs upstream's own code beside it).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from parley_tts.__main__ import capacity, load_engines
from parley_tts.config import TtsSettings
from parley_tts.engines import fireredtts2
from parley_tts.engines.base import StoredVoice, UnknownVoice, UnspeakableText, Utterance
from parley_tts.engines.fireredtts2 import (
    RANDOM_VOICE,
    TEXT_END,
    TEXT_START,
    ContextTooLong,
    FireRedTTS2Model,
    FireRedTTS2Recipe,
    FireRedTTS2Synthesizer,
    MissingModelFiles,
    Segment,
    codes_to_bytes,
    resample,
)
from services.tts.tests.tiny_fireredtts2 import AUDIO_VOCAB, CODEBOOKS, FRAME_LIMIT, write_models_dir


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models_dir(tmp_path_factory.mktemp("fireredtts2"))


@pytest.fixture(scope="module")
def model(models_dir: Path) -> FireRedTTS2Model:
    return FireRedTTS2Model.load(models_dir, "cpu")


class Recorder:
    """Wraps the LLM's generate_frame: keeps what it was fed, and can set `stop` during frame `stop_at`."""

    def __init__(self, model: FireRedTTS2Model, stop: threading.Event | None = None, stop_at: int = -1) -> None:
        self.inner = model.llm.generate_frame
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []
        self.stop, self.stop_at = stop, stop_at

    def __call__(self, tokens: torch.Tensor, mask: torch.Tensor, *args: Any) -> torch.Tensor:
        self.calls.append((tokens[0].numpy().copy(), mask[0].numpy().copy()))
        frame = self.inner(tokens, mask, *args)
        if self.stop is not None and len(self.calls) == self.stop_at:
            self.stop.set()  # as another thread would, while this frame is being computed
        return frame

    @property
    def prompt(self) -> tuple[np.ndarray, np.ndarray]:
        return self.calls[0]


def record(model: FireRedTTS2Model, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> Recorder:
    recorder = Recorder(model, **kwargs)
    monkeypatch.setattr(model.llm, "generate_frame", recorder)
    return recorder


def codes_of(value: int, frames: int) -> np.ndarray:
    """Codes that say which segment they belong to: every index is `value`."""
    return np.full((frames, CODEBOOKS), value, dtype=np.int64)


def audio_rows(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return tokens[mask[:, 0]][:, :-1]


def speak_all(model: FireRedTTS2Model, text: str, context: list[Segment], **kwargs: Any) -> list[np.ndarray]:
    kwargs.setdefault("max_frames", 12)
    return list(model.speak(text, kwargs.pop("speaker", "[S1]"), context, threading.Event(), **kwargs))


def test_stream_equals_one_shot_decode(model: FireRedTTS2Model) -> None:
    chunks = speak_all(model, "Hello there, how are you?", [], max_frames=12)

    assert model.last_codes is not None and model.last_codes.shape == (12, CODEBOOKS)
    assert len(chunks) == 12  # one chunk per frame, the last one flushed at the end
    # The codec's overlap: the first chunk is 360 samples short, the last 360 long, the rest one frame.
    assert [len(c) for c in chunks] == [1560] + [model.frame_samples] * 10 + [2280]
    with torch.inference_mode():
        one_shot = model.codec.decode(torch.from_numpy(model.last_codes.T).unsqueeze(0))[0].numpy()
    stream = np.concatenate(chunks)
    assert stream.dtype == np.float32 and stream.shape == one_shot.shape == (12 * model.frame_samples,)
    assert np.abs(one_shot).max() > 1e-3  # the random codebooks make audio depend on the codes
    np.testing.assert_allclose(stream, one_shot, atol=1e-5)


def test_speaker_tag_goes_into_the_text_frames(model: FireRedTTS2Model, monkeypatch: pytest.MonkeyPatch) -> None:
    earlier = Segment("[S1]", "Hi there.", codes_of(3, 5))
    recorder = record(model, monkeypatch)
    speak_all(model, f"How are you? [S1] I am “fine” {TEXT_END}[sic].", [earlier], speaker="[S2]", max_frames=2)

    tokens, mask = recorder.prompt
    text_column = tokens[mask[:, -1] & ~mask[:, 0]][:, -1].tolist()
    first = model.tokenizer.encode("[S1]" + TEXT_START + "Hi there." + TEXT_END)
    # The tag the caller gives; the text as written, less the model's speaker and framing tokens.
    second = model.tokenizer.encode("[S2]" + TEXT_START + "How are you?  I am “fine” [sic]." + TEXT_END)
    assert text_column == first + second
    assert tokens[-len(second) :, -1].tolist() == second  # the request's text frames come last
    assert not mask[-len(second) :, :-1].any()  # text frames carry no audio columns
    s1, s2 = model.tokenizer.encode("[S1]") + model.tokenizer.encode("[S2]")
    assert text_column.count(s1) == 1 and text_column.count(s2) == 1


def test_clone_prompt_feeds_the_stored_codes(model: FireRedTTS2Model, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = (0.2 * np.sin(np.arange(16000) * 2 * np.pi * 220 / 16000)).astype(np.float32)
    codes = model.encode_reference(reference)
    assert codes.shape == (13, CODEBOOKS) and codes.dtype == np.int64  # ceil(1 s / 80 ms)
    assert codes.min() >= 0 and codes.max() < AUDIO_VOCAB
    voice = Segment("[S1]", "A reference transcript.", codes, voice_prompt=True)

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("speak must not encode audio")

    monkeypatch.setattr(model, "encode_reference", never)
    monkeypatch.setattr(model.codec, "encode", never)
    recorder = record(model, monkeypatch)
    chunks = speak_all(model, "Say it in my voice.", [voice], max_frames=3)

    assert len(chunks) == 3
    tokens, mask = recorder.prompt
    # The voice prompt comes first, its transcript after the speaker's tag written twice, as upstream's.
    prompt_text = model.tokenizer.encode("[S1]" + TEXT_START + "[S1]A reference transcript." + TEXT_END)
    assert tokens[: len(prompt_text), -1].tolist() == prompt_text
    audio = audio_rows(tokens, mask)
    np.testing.assert_array_equal(audio[: len(codes)], codes)  # exactly the stored codes
    assert len(audio) == len(codes) + 1 and not audio[-1].any()  # then the EOS frame, and nothing else
    assert recorder.prompt[0].shape[0] == len(prompt_text) + len(codes) + 1 + len(
        model.tokenizer.encode("[S1]" + TEXT_START + "Say it in my voice." + TEXT_END)
    )


def test_reference_at_another_rate_is_resampled(model: FireRedTTS2Model) -> None:
    second = np.random.default_rng(1).standard_normal(48000).astype(np.float32) * 0.1
    assert model.encode_reference(second, sample_rate=48000).shape == (13, CODEBOOKS)


def test_stop_between_frames_generates_nothing_more(model: FireRedTTS2Model, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = record(model, monkeypatch)
    stop = threading.Event()
    received = []
    for chunk in model.speak("Hello there, how are you?", "[S1]", [], stop, max_frames=30):
        received.append(chunk)
        if len(received) == 3:
            stop.set()
            frames_at_stop = len(recorder.calls)
    assert len(received) == 3
    assert len(recorder.calls) == frames_at_stop  # not one frame after the stop
    assert model.last_codes is not None and len(model.last_codes) == 3  # the codes of what was yielded


def test_stop_during_a_frame_ends_after_that_frame(model: FireRedTTS2Model, monkeypatch: pytest.MonkeyPatch) -> None:
    stop = threading.Event()
    recorder = record(model, monkeypatch, stop=stop, stop_at=5)
    received = list(model.speak("Hello there, how are you?", "[S1]", [], stop, max_frames=30))
    assert len(recorder.calls) == 5  # the frame in flight finishes, no other starts
    assert len(received) == 3  # chunks of frames 1-3; frame 4 waited for frame 5 and frame 5 for nothing
    assert model.last_codes is not None and len(model.last_codes) == 3


def test_stop_before_start_and_early_close(model: FireRedTTS2Model, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = record(model, monkeypatch)
    stop = threading.Event()
    stop.set()
    assert list(model.speak("Hello.", "[S1]", [], stop, max_frames=10)) == []
    assert recorder.calls == [] and model.last_codes is not None and len(model.last_codes) == 0

    stream: Iterator[np.ndarray] = model.speak("Hello there.", "[S1]", [], threading.Event(), max_frames=10)
    next(stream), next(stream)
    stream.close()  # what ModelPool does when a caller goes away
    assert model.last_codes is not None and len(model.last_codes) == 2


def test_max_frames_bounds_the_output(model: FireRedTTS2Model, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = record(model, monkeypatch)
    chunks = speak_all(model, "Hello.", [], max_frames=7)
    assert len(recorder.calls) == 7 and len(chunks) == 7
    assert model.last_codes is not None and len(model.last_codes) == 7


def test_context_window_drops_oldest_first_and_keeps_the_prompt(
    model: FireRedTTS2Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert model.frame_limit == FRAME_LIMIT
    older = Segment("[S2]", "Hi.", codes_of(1, 15))
    voice = Segment("[S1]", "Hi.", codes_of(2, 15), voice_prompt=True)
    turns = [Segment("[S2]" if i % 2 else "[S1]", "Hi.", codes_of(3 + i, 15)) for i in range(4)]
    context = [older, voice, *turns]

    def fed(max_frames: int) -> tuple[list[int], int]:
        """Which segments reached the model (by their code values), and the prompt's length."""
        recorder = record(model, monkeypatch)
        speak_all(model, "Hello.", context, max_frames=max_frames)
        tokens, mask = recorder.prompt
        audio = audio_rows(tokens, mask)
        return [int(v) for v in dict.fromkeys(audio[:, 0]) if v], len(tokens)

    everything, length = fed(max_frames=4)  # 6 segments of ~27 frames + text fit in 160 with 4 to generate
    assert everything == [1, 2, 3, 4, 5, 6] and length + 4 <= FRAME_LIMIT
    trimmed, length = fed(max_frames=60)  # two segments must go: the oldest that are not the voice prompt
    assert trimmed == [2, 4, 5, 6] and length + 60 <= FRAME_LIMIT
    assert model.last_codes is not None and len(model.last_codes) == 60


def test_a_request_that_cannot_fit_is_refused(model: FireRedTTS2Model, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = record(model, monkeypatch)
    voice = Segment("[S1]", "Hi.", codes_of(2, 100), voice_prompt=True)
    with pytest.raises(ContextTooLong, match=f"limit of {FRAME_LIMIT} frames"):
        model.speak("Hello.", "[S1]", [voice], threading.Event(), max_frames=60)
    with pytest.raises(ContextTooLong):
        model.speak("Hello.", "[S1]", [], threading.Event(), max_frames=FRAME_LIMIT)
    assert recorder.calls == []  # refused before any model work


def test_bad_requests(model: FireRedTTS2Model) -> None:
    stop = threading.Event()
    with pytest.raises(UnspeakableText):
        model.speak("  ", "[S1]", [], stop, max_frames=5)
    with pytest.raises(ValueError, match="speaker"):
        model.speak("Hello.", "S1", [], stop, max_frames=5)
    with pytest.raises(ValueError, match="shape"):
        model.speak("Hello.", "[S1]", [Segment("[S1]", "Hi.", codes_of(1, 4)[:, :8])], stop, max_frames=5)
    with pytest.raises(ValueError, match=r"0\.\.31"):
        model.speak("Hello.", "[S1]", [Segment("[S1]", "Hi.", codes_of(AUDIO_VOCAB, 4))], stop, max_frames=5)


def test_load_picks_the_checkpoint(models_dir: Path) -> None:
    pretrain = FireRedTTS2Model.load(models_dir, "cpu", checkpoint="pretrain", frame_limit=100)
    saved = torch.load(models_dir / "llm_pretrain.pt")["model"]["codebook0_head.weight"]
    torch.testing.assert_close(pretrain.llm.codebook0_head.weight, saved)
    assert pretrain.frame_limit == 100
    assert next(pretrain.llm.parameters()).dtype == torch.float32  # bf16 is for CUDA only


def test_missing_files_are_named_in_one_error(models_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(MissingModelFiles) as nothing:
        FireRedTTS2Model.load(tmp_path / "nowhere", "cpu")
    assert nothing.value.missing == [
        "config_llm.json",
        "llm_posttrain.pt",
        "config_codec.json",
        "codec.pt",
        "Qwen2.5-1.5B/tokenizer.json (or vocab.json and merges.txt)",
    ]

    partial = tmp_path / "partial"
    shutil.copytree(models_dir, partial)
    (partial / "codec.pt").unlink()
    shutil.rmtree(partial / "Qwen2.5-1.5B")
    with pytest.raises(MissingModelFiles) as some:
        FireRedTTS2Model.load(partial, "cpu")
    assert "codec.pt" in str(some.value) and "Qwen2.5-1.5B/tokenizer.json" in str(some.value)
    assert some.value.missing == ["codec.pt", "Qwen2.5-1.5B/tokenizer.json (or vocab.json and merges.txt)"]

    (partial / "llm_pretrain.pt").unlink()
    with pytest.raises(MissingModelFiles, match=r"llm_pretrain\.pt, codec\.pt"):
        FireRedTTS2Model.load(partial, "cpu", checkpoint="pretrain")


def test_the_service_loads_the_engine_only_where_it_may(models_dir: Path) -> None:
    """What `python -m parley_tts` loads for PARLEY_TTS_ENGINES, and its refusal without a GPU."""
    settings = TtsSettings(
        engines="piper,fireredtts2",
        fireredtts2_models_dir=models_dir,
        fireredtts2_allow_cpu=True,
        fireredtts2_copies=2,
        fireredtts2_max_frames=25,  # the tiny model's frame limit is 160; random weights never stop
        instances=1,
    )
    copies = load_engines(settings)
    assert [c.engine for c in copies] == ["piper", "fireredtts2", "fireredtts2"]
    assert copies[1] is not copies[2] and copies[1].model is not copies[2].model  # type: ignore[attr-defined]
    assert capacity(settings) == 3
    hello = list(copies[1].synthesize(Utterance("Hello.", RANDOM_VOICE), copies[1].new_context()))
    assert sum(chunk.size for chunk in hello) == 25 * 1920  # bounded: random weights never stop

    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
            load_engines(settings.model_copy(update={"fireredtts2_allow_cpu": False}))
    with pytest.raises(MissingModelFiles):
        load_engines(settings.model_copy(update={"fireredtts2_models_dir": models_dir / "nowhere"}))
    with pytest.raises(ValueError, match="engines"):
        TtsSettings(engines="piper,coqui")


def test_speed_is_refused_and_context_is_kept_per_speaker(models_dir: Path) -> None:
    synthesizer = FireRedTTS2Synthesizer(FireRedTTS2Model.load(models_dir, "cpu"), max_frames=8)
    memory = synthesizer.new_context()
    with pytest.raises(UnspeakableText, match="speed"):
        list(synthesizer.synthesize(Utterance("Hi.", RANDOM_VOICE, speed=1.5), memory))
    list(synthesizer.synthesize(Utterance("Hello there.", RANDOM_VOICE, speaker=1), memory))
    list(synthesizer.synthesize(Utterance("Hi!", RANDOM_VOICE, speaker=2), memory))
    assert [(s.speaker, s.text, len(s.codes)) for s in memory.segments] == [
        ("[S1]", "Hello there.", 8),
        ("[S2]", "Hi!", 8),
    ]
    # S1 takes a stored voice: its prompt goes first, its turns in the random voice go.
    ana = StoredVoice("ana-1", "A reference.", codes_to_bytes(codes_of(3, 5)))
    list(synthesizer.synthesize(Utterance("Good.", ana, speaker=1), memory))
    assert [(s.speaker, s.text, s.voice_prompt) for s in memory.segments] == [
        ("[S1]", "A reference.", True),
        ("[S2]", "Hi!", False),
        ("[S1]", "Good.", False),
    ]
    list(synthesizer.synthesize(Utterance("Again.", ana, speaker=1), memory))  # the same voice: nothing is dropped
    assert [s.text for s in memory.segments] == ["A reference.", "Hi!", "Good.", "Again."]
    list(synthesizer.synthesize(Utterance("Random.", RANDOM_VOICE, speaker=1), memory))
    assert [(s.speaker, s.text) for s in memory.segments] == [("[S2]", "Hi!"), ("[S1]", "Random.")]


# --- the recipe: upstream's by default, and where it departs -------------------------------------------


@pytest.fixture(scope="module")
def pretrain(models_dir: Path) -> FireRedTTS2Model:
    return FireRedTTS2Model.load(models_dir, "cpu", checkpoint="pretrain")


def test_recipe_defaults_are_upstreams() -> None:
    upstream = FireRedTTS2Recipe(
        max_frames=375,  # 30 s per dialogue turn and per random-voice monologue
        temperature=0.9,
        monologue_max_frames=400,  # per cloned monologue piece
        monologue_temperature=0.75,
        top_k=20,
        context_codes=False,
        split_long_sentences=False,
    )
    assert FireRedTTS2Recipe() == upstream == FireRedTTS2Recipe.from_settings(TtsSettings())
    settings = TtsSettings(
        fireredtts2_max_frames=9, fireredtts2_context_codes=True, fireredtts2_split_long_sentences=True
    )
    assert FireRedTTS2Recipe.from_settings(settings) == FireRedTTS2Recipe(
        max_frames=9, context_codes=True, split_long_sentences=True
    )


def test_resample_is_torchaudios_default() -> None:
    """Numbers from torchaudio.functional.resample (2.11) on the same input: the context is encoded from the
    same samples as upstream's."""
    ramp = torch.sin(torch.arange(300, dtype=torch.float32) * 0.05) * torch.linspace(0, 1, 300)
    down = resample(ramp, 24000, 16000)
    assert down.shape == (200,)
    expected = [2.9649656880792463e-06, 0.0003773701610043645, 0.017615191638469696, -0.14342722296714783]
    assert [float(down[i]) for i in (0, 1, 7, 50)] == pytest.approx(expected, abs=1e-7)
    assert [float(down[i]) for i in (100, 199)] == pytest.approx([0.4707483649253845, 0.7324132323265076], abs=1e-7)
    odd = resample(ramp, 44100, 16000)
    assert odd.shape == (109,)
    assert [float(odd[i]) for i in (0, 3, 60, 108)] == pytest.approx(
        [1.01362747955136e-05, 0.011126706376671791, 0.5063430070877075, 0.7430908679962158], abs=1e-7
    )
    assert resample(ramp, 16000, 16000) is ramp
    assert resample(torch.stack([ramp, ramp]), 24000, 16000).shape == (2, 200)


def test_frame_bounds_are_per_turn_and_per_piece(
    model: FireRedTTS2Model, pretrain: FireRedTTS2Model, caplog: pytest.LogCaptureFixture
) -> None:
    """Random weights never say end of speech: each generation stops at its bound, and says so."""
    recipe = FireRedTTS2Recipe(max_frames=9, monologue_max_frames=11)
    dialogue = FireRedTTS2Synthesizer(model, recipe=recipe)
    audio = list(dialogue.synthesize(Utterance("Hi.", RANDOM_VOICE), dialogue.new_context()))
    assert len(audio) == 9 and model.last_complete  # however short the text: no bound per character
    assert "no end of speech within its bound of 9 frames" in caplog.text

    monologue = FireRedTTS2Synthesizer(pretrain, recipe=recipe)
    voice = StoredVoice("v", "A reference.", codes_to_bytes(codes_of(3, 6)))
    audio = list(monologue.synthesize(Utterance("Hello there.", voice), monologue.new_context()))
    assert len(audio) == 11 - 2  # a cloned piece: its own bound, the first 2 frames not spoken
    assert "bound of 11 frames" in caplog.text


def test_a_monologue_clones_by_continuing_the_reference(
    pretrain: FireRedTTS2Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    synthesizer = FireRedTTS2Synthesizer(pretrain, recipe=FireRedTTS2Recipe(monologue_max_frames=6))
    codes = codes_of(3, 6)
    voice = StoredVoice("v", "A “reference” take.", codes_to_bytes(codes))
    recorder = record(pretrain, monkeypatch)
    chunks = list(synthesizer.synthesize(Utterance("Say: “this”.", voice, speaker=2), synthesizer.new_context()))
    assert len(chunks) == 4 and pretrain.last_codes is not None and len(pretrain.last_codes) == 4

    tokens, mask = recorder.prompt
    # One segment, always as [S1]: HEAD's clean_text on both texts, the transcript's last character cut.
    text = pretrain.tokenizer.encode("[S1]" + TEXT_START + "A reference take,Say, this." + TEXT_END)
    assert tokens[: len(text), -1].tolist() == text and len(tokens) == len(text) + len(codes) - 2
    np.testing.assert_array_equal(audio_rows(tokens, mask), codes[:-2])  # no EOS frame


def test_a_long_random_monologue_goes_on_in_its_first_pieces_voice(
    pretrain: FireRedTTS2Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upstream speaks a random voice in one generation and loses what does not fit; here the pieces after
    the first continue the first piece, which becomes the speaker's voice prompt."""
    monkeypatch.setattr(fireredtts2, "MONOLOGUE_PIECE_BYTES", 24)  # pieces that fit the tiny model
    synthesizer = FireRedTTS2Synthesizer(pretrain, recipe=FireRedTTS2Recipe(max_frames=7, monologue_max_frames=8))
    memory = synthesizer.new_context()
    recorder = record(pretrain, monkeypatch)
    heard = list(synthesizer.synthesize(Utterance("Hello there, my friend. How are you today?", RANDOM_VOICE), memory))

    assert len(recorder.calls) == 7 + 8 and len(heard) == 7 + 6
    [voice] = memory.segments
    assert (voice.speaker, voice.text, voice.voice_prompt) == ("[S1]", "Hello there, my friend.", True)
    np.testing.assert_array_equal(voice.codes, pretrain.encode_speech(np.concatenate(heard[:7])))  # re-encoded
    first, second = recorder.calls[0], recorder.calls[7]
    assert first[0][:, -1].tolist() == pretrain.tokenizer.encode(f"[S1]{TEXT_START}Hello there, my friend.{TEXT_END}")
    text = pretrain.tokenizer.encode(f"[S1]{TEXT_START}Hello there, my friend,How are you today?{TEXT_END}")
    assert second[0][: len(text), -1].tolist() == text
    np.testing.assert_array_equal(audio_rows(*second), voice.codes[:-2])

    # The next utterance of the conversation speaks in that voice too; a stored voice replaces it.
    list(synthesizer.synthesize(Utterance("Fine.", RANDOM_VOICE), memory))
    assert len(recorder.calls) == 7 + 8 + 8 and memory.segments == [voice]
    stored = StoredVoice("v", "A reference.", codes_to_bytes(codes_of(3, 6)))
    list(synthesizer.synthesize(Utterance("Fine.", stored), memory))
    assert [s.text for s in memory.segments] == ["A reference."]


def test_a_random_first_piece_cut_short_is_no_voice_prompt(pretrain: FireRedTTS2Model) -> None:
    synthesizer = FireRedTTS2Synthesizer(pretrain, recipe=FireRedTTS2Recipe(max_frames=9))
    memory = synthesizer.new_context()
    stream = synthesizer.synthesize(Utterance("Hello there.", RANDOM_VOICE), memory)
    next(stream), next(stream)
    stream.close()  # a barge-in: its transcript would not match its audio
    assert memory.segments == [] and not pretrain.last_complete


def test_turns_go_into_the_context_as_upstream_or_as_codes(model: FireRedTTS2Model) -> None:
    reencoding = FireRedTTS2Synthesizer(model, recipe=FireRedTTS2Recipe(max_frames=6))
    memory = reencoding.new_context()
    heard = list(reencoding.synthesize(Utterance("Hello there.", RANDOM_VOICE), memory))
    generated = model.last_codes
    assert generated is not None
    [turn] = memory.segments
    np.testing.assert_array_equal(turn.codes, model.encode_speech(np.concatenate(heard)))
    assert not np.array_equal(turn.codes, generated)

    codes = FireRedTTS2Synthesizer(model, recipe=FireRedTTS2Recipe(max_frames=6, context_codes=True))
    memory = codes.new_context()
    list(codes.synthesize(Utterance("Hello there.", RANDOM_VOICE), memory))
    np.testing.assert_array_equal(memory.segments[0].codes, model.last_codes)

    # A turn cut short goes in as what was heard of it.
    memory = reencoding.new_context()
    stream = reencoding.synthesize(Utterance("Hello there.", RANDOM_VOICE), memory)
    cut = [next(stream), next(stream)]
    stream.close()
    np.testing.assert_array_equal(memory.segments[0].codes, model.encode_speech(np.concatenate(cut)))
    assert len(memory.segments[0].codes) == 2


def test_long_turns_are_split_and_long_sentences_only_when_asked(
    model: FireRedTTS2Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    said: list[str] = []

    def speak(text: str, *args: Any, **kwargs: Any) -> Iterator[np.ndarray]:
        said.append(text)
        model.last_codes = None  # nothing spoken
        yield from ()

    monkeypatch.setattr(model, "speak", speak)
    sentence = " ".join(["word"] * 100)  # one sentence over 80 words
    text = f"Short one. {sentence}. And the end!"
    upstream = FireRedTTS2Synthesizer(model, recipe=FireRedTTS2Recipe())
    list(upstream.synthesize(Utterance(text, RANDOM_VOICE), upstream.new_context()))
    assert said == ["Short one.", sentence + ".", "And the end!"]  # upstream leaves the long sentence whole

    said.clear()
    splitting = FireRedTTS2Synthesizer(model, recipe=FireRedTTS2Recipe(split_long_sentences=True))
    list(splitting.synthesize(Utterance(text, RANDOM_VOICE), splitting.new_context()))
    assert said == ["Short one.", " ".join(["word"] * 80), " ".join(["word"] * 20) + ".", "And the end!"]


def test_a_dialogue_cast_puts_every_prompt_first(model: FireRedTTS2Model, monkeypatch: pytest.MonkeyPatch) -> None:
    synthesizer = FireRedTTS2Synthesizer(model, recipe=FireRedTTS2Recipe(max_frames=2))
    ana = StoredVoice("ana", "Ana's reference.", codes_to_bytes(codes_of(3, 5)))
    bob = StoredVoice("bob", "Bob's reference.", codes_to_bytes(codes_of(4, 5)))
    memory = synthesizer.new_context()
    memory.cast({3: bob, 2: RANDOM_VOICE, 1: ana})
    assert [(s.speaker, s.voice_prompt) for s in memory.segments] == [("[S1]", True), ("[S3]", True)]

    recorder = record(model, monkeypatch)
    list(synthesizer.synthesize(Utterance("Hello.", ana, speaker=1), memory))
    tokens, mask = recorder.prompt
    assert [int(v) for v in dict.fromkeys(audio_rows(tokens, mask)[:, 0]) if v] == [3, 4]  # both, before turn 1
    assert [s.text for s in memory.segments] == ["Ana's reference.", "Bob's reference.", "Hello."]

    with pytest.raises(UnknownVoice):
        memory.cast({1: "nobody"})
    with pytest.raises(ValueError, match="speaker"):
        memory.cast({5: ana})
