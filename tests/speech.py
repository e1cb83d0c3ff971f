"""Spoken test audio made at test time with espeak-ng and sox (Debian packages)."""

from __future__ import annotations

import io
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np


def speak(text: str, sample_rate: int = 16000, voice: str = "en-us", words_per_minute: int = 160) -> bytes:
    """PCM16 mono of `text`, with leading and trailing silence trimmed."""
    with tempfile.TemporaryDirectory() as tmp:
        raw, out = Path(tmp) / "raw.wav", Path(tmp) / "out.raw"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", str(raw), text], check=True)
        subprocess.run(
            [
                "sox",
                "-R",  # repeatable dither: the same text makes the same audio on every run
                str(raw),
                "-r",
                str(sample_rate),
                "-c",
                "1",
                "-b",
                "16",
                "-e",
                "signed-integer",
                "-t",
                "raw",
                str(out),
                "silence",
                "1",
                "0.02",
                "0.5%",
                "reverse",
                "silence",
                "1",
                "0.02",
                "0.5%",
                "reverse",
            ],
            check=True,
        )
        return out.read_bytes()


def silence(seconds: float, sample_rate: int = 16000) -> bytes:
    return bytes(int(seconds * sample_rate) * 2)


def rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0
    return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0


def wav_bytes(pcm: bytes, sample_rate: int = 16000) -> bytes:
    """A WAV file (16-bit mono) of PCM16 samples, as a user would upload it."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm)
    return buffer.getvalue()


# Short everyday questions, answered in a sentence or two (benchmarks and load tests ask them).
QUESTIONS = (
    "What is the capital city of France?",
    "How many days are there in a week?",
    "Can you recommend a good book to read?",
    "What is the weather usually like in summer?",
    "Tell me a fun fact about elephants.",
    "What time does the sun usually set?",
    "How do I make a cup of green tea?",
    "What is your favourite colour?",
    "Where is the nearest train station?",
    "Why is the sky blue during the day?",
)
