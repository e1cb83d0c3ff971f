"""Whisper through faster-whisper (CTranslate2).

Short utterances take a fast path: Whisper's encoder normally always sees a
30 s window (the audio padded with silence), which costs the same for a 2 s
question as for 30 s of speech. CTranslate2 accepts a shorter window, so an
utterance is encoded in a window of `encoder_window_s` (or its own length plus
a margin, if longer) — the same idea as whisper.cpp's `audio_ctx`. On the
embedded tiny.en a 10 s window decodes a 2 s question ~3.5x faster with the
same words (docs/benchmarks.md has the word error rates). Windows much
shorter than 10 s make Whisper repeat itself; 30 restores stock behaviour.
Utterances that do not fit take faster-whisper's standard path.

For an English-only model the window past the audio holds the features of
silence, as Whisper's reference code computes them (`log_mel_spectrogram(audio,
padding=N_SAMPLES)`: the audio padded with zeros), not faster-whisper's
zero-valued features, which read as a faint sound: with those, how much silence
followed the words changed them (tiny.en: "about elephants" with 130 ms, "about
the elephant" with 100 or 200 ms, a garble with 300 ms), so a transcript depended
on when the VAD's pause was handled. With silence's features it does not, and the
word error rate of tiny.en's fast path is lower. A multilingual model keeps
faster-whisper's padding: with silence, base detected the language of short
questions less often (docs/benchmarks.md, "An earlier pause, judged as before,
and words that do not depend on the silence after them").

A decode asked to stop (a partial made worthless by the end of the utterance)
gives up before its next stage: mel features, encoder, decoder, or the next
segment on the standard path. CTranslate2's Whisper decoder itself cannot be
interrupted (it has no token callback).

Finals and partials may decode with different beams: a final is what the user
waits for, and greedy decoding (beam 1) of tiny.en loses 2.0-2.3 points of
word error rate to a beam of 3, which costs ~10 ms more; a partial only feeds
early work and is redone at the end, so it stays greedy (docs/benchmarks.md,
"ASR: word error rate of the fast path").

A multilingual model asked for no language detects it on the encoder output the
fast path computes anyway (one decoder step, ~20 ms on the base model): on the
short window its probabilities are close to the stock 30 s window's for questions
of a few seconds, and it is right about as often (docs/benchmarks.md, "ASR: languages").
An English-only model reports English with probability 1.

Beam search on the short window sometimes ranks the whole utterance said twice
("How many days are there in a week? How many days are there in a week?") just
above the single copy, because its length-normalised score is higher. A final
decode keeps the beam's hypotheses and takes the best one that is not one run of
tokens repeated back to back.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens

from parley.pcm import Float32Array
from parley_asr.catalogue import CATALOGUE, DEFAULT_MODEL, model_directory
from parley_asr.engines.base import Recognition

FRAMES_PER_S = 100  # Whisper's mel frames
HOP_SAMPLES = 160  # audio samples per mel frame at 16 kHz
FULL_WINDOW_S = 30.0
WINDOW_MARGIN_S = 1.0
# A hard ceiling on tokens per second of audio: stops a rare repetition loop.
MAX_TOKENS_PER_S = 15
# The shortest run of tokens whose back-to-back repetition marks a hypothesis as looping.
MIN_LOOP_TOKENS = 3


def loops(tokens: list[int]) -> bool:
    """Whether `tokens` are one run of at least MIN_LOOP_TOKENS said twice or more back to back.

    The last copy may be cut short (the decoder hit its length limit mid-way).
    """
    for size in range(MIN_LOOP_TOKENS, len(tokens) // 2 + 1):
        run = tokens[:size]
        if all(tokens[i] == run[i % size] for i in range(size, len(tokens))):
            return True
    return False


def embedded_model_path() -> Path:
    """The default embedded model's directory, its files checked against their pinned sha256."""
    return model_directory(CATALOGUE[DEFAULT_MODEL])


class FasterWhisperRecognizer:
    sample_rate = 16000

    def __init__(
        self,
        model_path: Path | None,
        device: str,
        compute_type: str,
        threads: int,
        beam_size: int,
        encoder_window_s: float = FULL_WINDOW_S,
        detect_languages: frozenset[str] = frozenset(),
        partial_beam_size: int | None = None,
    ) -> None:
        path = model_path or embedded_model_path()
        if not (path / "model.bin").is_file():
            raise FileNotFoundError(f"no CTranslate2 Whisper model (model.bin) in {path}")
        self.model = WhisperModel(
            str(path),
            device=device,
            compute_type=compute_type,
            # CTranslate2's own default (4) oversubscribes small machines.
            cpu_threads=threads or os.cpu_count() or 4,
            local_files_only=True,
        )
        self.multilingual = bool(self.model.model.is_multilingual)
        # What fills the short window past the audio: silence (an English-only model) or zero-valued features
        # (a multilingual one, as faster-whisper pads): the module's docstring.
        self.silence_padding = not self.multilingual
        # faster-whisper lists every code any Whisper knows ("yue" came with large-v3); a model
        # knows those whose language token its own vocabulary has.
        vocabulary = self.model.hf_tokenizer
        self.languages = frozenset(
            code for code in self.model.supported_languages if vocabulary.token_to_id(f"<|{code}|>") is not None
        )
        self.beam_size = beam_size  # finals
        self.partial_beam_size = partial_beam_size or beam_size
        self.encoder_window_s = min(FULL_WINDOW_S, encoder_window_s)
        # The languages detection chooses among; empty: all it knows.
        self.detect_languages = detect_languages

    def _choose(self, scores: list[tuple[str, float]]) -> tuple[str, float]:
        """The likeliest language of (code, probability) pairs, best first, and its probability.

        With candidates, the others are dropped and the probabilities renormalised over the rest:
        on a short question Whisper often puts a related or unrelated language first (docs/benchmarks.md).
        """
        if self.detect_languages:
            scores = [(code, p) for code, p in scores if code in self.detect_languages] or scores
        total = sum(p for _, p in scores) if self.detect_languages else 1.0
        return scores[0][0], scores[0][1] / max(total, 1e-9)

    def transcribe(
        self, audio: Float32Array, language: str | None, stop: threading.Event | None = None, final: bool = True
    ) -> Recognition:
        stop = stop or threading.Event()
        beam_size = self.beam_size if final else self.partial_beam_size
        duration_s = audio.size / self.sample_rate
        if self.encoder_window_s < FULL_WINDOW_S and duration_s + WINDOW_MARGIN_S <= FULL_WINDOW_S:
            return self._short_window(audio, language, duration_s, stop, beam_size)
        probability: float | None = None
        if self.multilingual and not language and self.detect_languages:
            # faster-whisper's own detection cannot be limited to candidates: detect here, then decode in it.
            language, probability = self._choose(self.model.detect_language(audio)[2])
        segments, info = self.model.transcribe(
            audio,
            language=language if self.multilingual else "en",
            beam_size=beam_size,
            vad_filter=False,  # the VAD service already cut the utterance
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        texts: list[str] = []
        log_probabilities: list[float] = []
        for segment in segments:  # decoded lazily, one segment at a time
            if stop.is_set():
                break
            texts.append(segment.text.strip())
            log_probabilities.append(segment.avg_logprob)
        return Recognition(
            text=" ".join(texts).strip(),
            language=info.language,
            language_probability=probability or (info.language_probability if self.multilingual else 1.0),
            confidence=math.exp(sum(log_probabilities) / len(log_probabilities)) if log_probabilities else 0.0,
        )

    def _short_window(
        self, audio: Float32Array, language: str | None, duration_s: float, stop: threading.Event, beam_size: int
    ) -> Recognition:
        stopped = Recognition(text="", language=language or "")
        window = int(max(self.encoder_window_s, duration_s + WINDOW_MARGIN_S) * FRAMES_PER_S)
        # Silence, not zero features, fills the window (the module's docstring).
        padding = max(0, window * HOP_SAMPLES - audio.size) if self.silence_padding else 0
        features = self.model.feature_extractor(np.pad(audio, (0, padding)))[:, :window]
        features = np.pad(features, ((0, 0), (0, max(0, window - features.shape[1]))))
        if stop.is_set():
            return stopped
        encoded = self.model.encode(features)
        if stop.is_set():
            return stopped
        probability = 1.0
        if not self.multilingual:
            language = "en"
        elif not language:
            scores = self.model.model.detect_language(encoded)[0]
            language, probability = self._choose([(token.strip("<|>"), p) for token, p in scores])
        tokenizer = Tokenizer(self.model.hf_tokenizer, self.multilingual, task="transcribe", language=language)
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        result = self.model.model.generate(
            encoded,
            [prompt],
            beam_size=beam_size,
            num_hypotheses=beam_size,  # the beam holds them anyway: costs nothing
            max_length=len(prompt) + int(MAX_TOKENS_PER_S * duration_s) + 8,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, (-1,)),
            # Each hypothesis's log-probability per token (CTranslate2 divides by the length).
            return_scores=True,
        )[0]
        hypotheses = [[t for t in sequence if t < tokenizer.eot] for sequence in result.sequences_ids]
        best = next((i for i, h in enumerate(hypotheses) if not loops(h)), 0)
        return Recognition(
            text=tokenizer.decode(hypotheses[best]).strip(),
            language=language,
            language_probability=probability,
            confidence=math.exp(result.scores[best]),
        )
