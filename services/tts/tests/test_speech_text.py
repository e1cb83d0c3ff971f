"""A request's language: its check, the voice's languages, and numbers written out for engines that need it."""

from __future__ import annotations

import grpc
import pytest

from parley.models import ModelPool
from parley_tts.engines.base import StoredVoice, VoiceInfo
from parley_tts.engines.fireredtts2 import FireRedTTS2Synthesizer
from parley_tts.engines.fireredtts2_text import LANGUAGES
from parley_tts.engines.piper import PiperSynthesizer
from parley_tts.refusal import Refused
from parley_tts.speech import EngineRuntime
from parley_tts.speech_text import check_speaks, checked_language, numbers_in_words, prepare_text
from parley_tts.voice_library import Voice


def runtime(name: str, language: str, written_out: frozenset[str], cloning: bool = False) -> EngineRuntime:
    voice = VoiceInfo(f"{name}-voice", name, language, 24000)
    return EngineRuntime(name, cloning, 24000, written_out, {voice.id: voice}, lambda: None, ModelPool(name))  # type: ignore[arg-type, return-value]


PIPER = runtime("piper", "en", PiperSynthesizer.numbers_written_out)
FIRERED = runtime("fireredtts2", ",".join(LANGUAGES), FireRedTTS2Synthesizer.numbers_written_out, cloning=True)


@pytest.mark.parametrize("language", ["", "en", "fr", "zh", "haw", "yue"])  # 639-2/3 where 639-1 has none
def test_an_iso_639_code_or_nothing_is_accepted(language: str) -> None:
    assert checked_language(language) == language


@pytest.mark.parametrize("language", ["EN", "engl", "en-US", "en_US", "f", "français"])
def test_anything_else_is_invalid(language: str) -> None:
    with pytest.raises(Refused) as refused:
        checked_language(language)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_voice_speaks_what_it_lists_and_a_cloned_one_its_engines_languages_too() -> None:
    assert Voice(PIPER, "piper-voice").languages() == {"en"}
    assert Voice(FIRERED, "fireredtts2-voice").languages() == set(LANGUAGES)
    cloned = Voice(FIRERED, StoredVoice("ana-123456", "hola", b""))  # a Spanish reference
    assert cloned.languages() == set(LANGUAGES)  # a Spanish reference does not teach the engine Spanish


def test_a_language_the_voice_does_not_speak_names_an_engine_that_does() -> None:
    check_speaks(PIPER, frozenset({"en"}), "en", [PIPER])
    check_speaks(PIPER, frozenset({"en"}), "", [PIPER])  # the voice's own
    with pytest.raises(Refused) as here:
        check_speaks(PIPER, frozenset({"en"}), "fr", [PIPER, FIRERED])
    assert here.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "the fireredtts2 engine here speaks it" in here.value.message
    with pytest.raises(Refused) as elsewhere:
        check_speaks(PIPER, frozenset({"en"}), "ja", [PIPER])
    assert "PARLEY_TTS_ENGINES=piper,fireredtts2" in elsewhere.value.message
    with pytest.raises(Refused) as piper_voice:
        check_speaks(PIPER, frozenset({"en"}), "es", [PIPER])
    assert "PARLEY_TTS_PIPER_VOICES_DIR" in piper_voice.value.message


@pytest.mark.parametrize(
    ("language", "text", "spoken"),
    [
        ("fr", "Il y a 3 000 personnes et 2,5 kg.", "Il y a trois mille personnes et deux virgule cinq kg."),
        ("de", "Es sind 21 Katzen.", "Es sind einundzwanzig Katzen."),
        ("en", "I have 1,200 cats and 3.5 dogs.", "I have one thousand, two hundred cats and three point five dogs."),
        ("ja", "価格は3500円です。", "価格は三千五百円です。"),  # no spaces around the number: still a number
        ("ru", "Это 100 рублей.", "Это сто рублей."),
        ("en", "An MP3 in 4K.", "An MP3 in 4K."),  # digits inside words stay
        ("zh", "价格是35元。", "价格是35元。"),  # num2words has no Chinese: left as written
        ("xx", "Room 42.", "Room 42."),
    ],
)
def test_numbers_are_written_out_in_the_language(language: str, text: str, spoken: str) -> None:
    assert numbers_in_words(text, language) == spoken


def test_only_an_engine_that_does_not_read_numbers_gets_them_in_words() -> None:
    assert prepare_text("Il a 3 chats.", "fr", PIPER) == "Il a 3 chats."  # espeak-ng reads them itself
    assert prepare_text("Il a 3 chats.", "fr", FIRERED) == "Il a trois chats."
    assert prepare_text("Le 01/03/2025.", "fr", FIRERED) == "Le premier mars deux mille vingt-cinq."
    assert prepare_text("He has 3 cats.", "", FIRERED) == "He has 3 cats."  # no language: as upstream feeds it
    assert prepare_text("He has 3 cats.", "en", FIRERED) == "He has 3 cats."  # its authors' languages: the same
    assert prepare_text("他有3只猫。", "zh", FIRERED) == "他有3只猫。"
