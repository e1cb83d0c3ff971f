"""Which voice speaks a reply in a given language.

Voices say what they speak in ListVoices: a built-in voice's `language` is one ISO 639-1 code, or
several separated by commas for an engine that speaks many (FireRedTTS2); a stored (cloned) voice's
`language` is that of its reference recording, and an engine that clones speaks it in every language
that engine speaks (its built-in voices say which), and in no other.

The choice, in order: the session's voice when it speaks the language; else a built-in voice of the
same engine that does (that engine's default for the language); else any voice that does, built-in
first. None when no voice running anywhere speaks it: the reply is then sent as text only, with a
`voice_unavailable` notice that names the language.
"""

from __future__ import annotations

from parley.tts.v1 import tts_pb2
from parley_gateway.conversation.language import base_language


def voice_languages(voice: tts_pb2.Voice) -> frozenset[str]:
    """The ISO 639 codes a voice's own `language` lists ("en_US" -> "en"; "en,zh" -> both)."""
    return frozenset(base_language(code) for code in voice.language.split(",") if code.strip())


def _engine_languages(voices: list[tts_pb2.Voice]) -> dict[str, frozenset[str]]:
    """Engine -> the languages its built-in voices speak."""
    spoken: dict[str, set[str]] = {}
    for voice in voices:
        if not voice.cloned and voice.engine:
            spoken.setdefault(voice.engine, set()).update(voice_languages(voice))
    return {engine: frozenset(languages) for engine, languages in spoken.items()}


def speaks(voice: tts_pb2.Voice, language: str, engines: dict[str, frozenset[str]]) -> bool:
    if voice.cloned:
        # A cloned voice speaks whatever the engines that can speak it speak (cross-lingual cloning), and
        # only that: its reference's language does not teach an engine a language it does not list.
        return any(language in engines.get(engine, frozenset()) for engine in voice.engines)
    return language in voice_languages(voice)


def choose_voice(listing: tts_pb2.ListVoicesResponse, voice_id: str, language: str) -> tts_pb2.Voice | None:
    """The voice to speak `language` with when the session asked for `voice_id` (empty: the default voice)."""
    language = base_language(language)
    voices = [voice for voice in listing.voices if voice.engines]  # one nobody can speak now is no choice
    engines = _engine_languages(voices)
    wanted = voice_id or listing.default_voice
    chosen: tts_pb2.Voice | None = next((voice for voice in voices if voice.id == wanted), None)
    if chosen is not None and speaks(chosen, language, engines):
        return chosen
    if chosen is not None:
        same_engine = chosen.engine or (chosen.engines[0] if chosen.engines else "")
        for voice in voices:
            if not voice.cloned and voice.engine == same_engine and speaks(voice, language, engines):
                found: tts_pb2.Voice = voice
                return found
    builtin_first = sorted(voices, key=lambda voice: voice.cloned)
    anyone: tts_pb2.Voice | None = next((voice for voice in builtin_first if speaks(voice, language, engines)), None)
    return anyone
