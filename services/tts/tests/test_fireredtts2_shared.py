"""Several streams on one FireRedTTS2 copy, each on its own thread as the service runs them (`share`).

Each stream must say exactly what it says when the streams take turns, whoever shares its steps, and
the steps must really be shared, the codec's decode included. Tiny random weights, the LLM and the codec
in float64 so that a batched matmul and a lone one agree to the last bits that could move a sample (or,
for the audio, its float32 rounding).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from parley_tts.engines.base import Utterance
from parley_tts.engines.fireredtts2 import FireRedTTS2Model, FireRedTTS2Synthesizer, RedCodecInfer
from services.tts.tests.tiny_fireredtts2 import decode_codes_in_float64, write_models_dir

TEXTS = ("Hello there, how are you today?", "I am fine, thank you.", "The quick brown fox jumps.")
FRAMES = 12  # random weights never say their end of speech


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models_dir(tmp_path_factory.mktemp("fireredtts2-shared"), frame_limit=400)


@pytest.fixture(autouse=True)
def float64_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    from fireredtts2.codec.rvq import ResidualVQ

    monkeypatch.setattr(ResidualVQ, "decode_codes", decode_codes_in_float64)


def shared_synthesizers(models: Path, streams: int) -> list[FireRedTTS2Synthesizer]:
    model = FireRedTTS2Model.load(models, "cpu")
    model.llm.double()
    model.codec.upsample.double()  # the decoding side; the encoders stay as they are
    model.codec.acoustic_decoder.double()
    torch.manual_seed(0)  # the handles' own generators are seeded from it
    return [FireRedTTS2Synthesizer(handle, max_frames=FRAMES) for handle in model.share(streams)]


def speak(synthesizer: FireRedTTS2Synthesizer, text: str) -> tuple[np.ndarray, np.ndarray]:
    voice = synthesizer.voices()[0].id
    audio = np.concatenate(list(synthesizer.synthesize(Utterance(text, voice), synthesizer.new_context())))
    codes = synthesizer.model.last_codes
    assert codes is not None
    return audio, codes


def upstream_audio(codec: RedCodecInfer, codes: np.ndarray) -> np.ndarray:
    """The audio upstream's own streaming loop makes of these codes: one `decode_one_token` a frame."""
    cache: dict[str, torch.Tensor] = {}
    chunks = []
    for i, frame in enumerate(torch.from_numpy(codes)):
        chunk, cache = codec.decode_one_token(frame[None, :, None], cache, last_token=i == len(codes) - 1)
        chunks.append(chunk[0].float().numpy())
    return np.concatenate(chunks)


def test_streams_sharing_a_copy_say_what_they_say_taking_turns(models: Path) -> None:
    alone = [speak(s, text) for s, text in zip(shared_synthesizers(models, 3), TEXTS, strict=True)]

    synthesizers = shared_synthesizers(models, 3)
    together: list[tuple[np.ndarray, np.ndarray] | None] = [None] * 3
    start = threading.Barrier(3)

    def run(index: int) -> None:
        start.wait()
        together[index] = speak(synthesizers[index], TEXTS[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    shared = synthesizers[0].model.shared
    assert shared is not None and shared.largest_step > 1, "the streams never shared a step"
    assert shared.largest_decode > 1, "the streams never shared a codec pass"
    for (audio, codes), result in zip(alone, together, strict=True):
        assert result is not None
        assert np.array_equal(result[1], codes) and len(codes) == FRAMES
        assert np.array_equal(result[0], audio)
        # and the batched codec said what upstream's per-stream decode says (float64, so to float32's rounding)
        assert np.allclose(upstream_audio(synthesizers[0].model.codec, codes), audio, rtol=0, atol=1e-7)
    assert shared.batcher.capacity == 3, "every stream left its slot"


def test_one_stream_per_copy_is_the_copy_itself(models: Path) -> None:
    model = FireRedTTS2Model.load(models, "cpu")
    assert model.share(1) == [model] and model.shared is None
