"""Word error rate and decode time of the ASR engine's settings against Whisper's stock decode.

Parley's ASR service decodes short utterances on a fast path: a short encoder
window (PARLEY_ASR_ENCODER_WINDOW_S) and a small beam (PARLEY_ASR_BEAM_SIZE;
partials use PARLEY_ASR_PARTIAL_BEAM_SIZE). This measures what each setting
costs in words against the stock decode, faster-whisper's `WhisperModel.transcribe`
with its defaults (beam 5, best of 5, temperature fallback, conditioning on
previous text, 30 s window, timestamps), VAD filter off.

Every question of a language is spoken by espeak-ng in each of that language's
voices, at one of three rates (rotating, so that each voice speaks a third of
the questions at each rate), and framed as the service receives it (300 ms of
VAD padding before, 200 ms of pause after). A setting is `stock` or
`b<beam>w<window s>`, e.g. `b1w10` (beam 1, 10 s window) or `b5w30`; a trailing
`d` (`b1w10d`) leaves the language to the model's detection instead of giving
it, and reports per language how often it was detected right; then `f` (`b3w10f`)
fills the short window past the audio with zero-valued features, as faster-whisper
pads, or `s` (`b1w10ds`) with the features of silence, as Whisper's reference code
does (without either: the engine's choice, silence for an English-only model).
`--pause-ms` changes the silence after each clip (the pause at which the gateway
ends a stream), `--lead-ms` the silence before it.

    python bench/asr_wer.py                                   # English, the default settings list
    python bench/asr_wer.py --settings stock b1w10 b3w10 --timing-passes 5
    python bench/asr_wer.py --model-path /workspace/models/whisper-large-v3-turbo --languages en fr
    python bench/asr_wer.py --model base --languages fr de es --settings b1w10 b1w10d  # embedded multilingual
    python bench/asr_wer.py --model base --languages en fr --settings b1w10d --detect-among en fr

Word error rates are on normalised words (`normalise`): lower case, no
punctuation or hyphens, British spellings mapped to Whisper's American ones,
and numbers written in digits turned into words on both sides, so that "15" and
"fifteen" count as the same word. The references are written the way Whisper
writes them (digits for numbers, years and times).

Decode time is measured apart from the accuracy pass, on a subset of the clips,
with the settings interleaved clip by clip (so that load from other processes
falls on all of them alike): the median over `--timing-passes` passes of each
pass's median, with the load average beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.conversation_latency import SPELLING  # noqa: E402
from parley.pcm import Float32Array, pcm16_to_float  # noqa: E402
from parley_asr.catalogue import CATALOGUE, DEFAULT_MODEL, choose_model  # noqa: E402
from parley_asr.engines.faster_whisper import FasterWhisperRecognizer  # noqa: E402
from tests.speech import QUESTIONS as CONVERSATION_QUESTIONS  # noqa: E402
from tests.speech import silence, speak  # noqa: E402

# Spoken questions per language (ISO 639-1), written as Whisper writes them.
# Add a language by adding its questions here and its espeak-ng voices to VOICES.
QUESTIONS: dict[str, tuple[str, ...]] = {
    "en": (
        "Tell me a short story about a cat.",
        *CONVERSATION_QUESTIONS,
        # Everyday requests (the set of the encoder window benchmark).
        "Please set an alarm for seven in the morning.",
        "I would like to order a large pizza with mushrooms.",
        "How long does it take to drive to the airport?",
        "Remind me to call my sister tomorrow afternoon.",
        "What should I cook for dinner tonight?",
        "Is it going to rain this weekend?",
        "Play some relaxing music in the living room.",
        "How tall is the highest mountain in the world?",
        "Can you explain how a rainbow is formed?",
        "My flight leaves at half past nine.",
        "Turn off the lights in the kitchen please.",
        "What is the difference between a frog and a toad?",
        "I need a new pair of running shoes.",
        "How much water should I drink every day?",
        "Who wrote the story about the little prince?",
        "Let us meet at the coffee shop near the park.",
        "The meeting has been moved to Thursday.",
        "Could you read me the latest news headlines?",
        "What is the best way to learn a new language?",
        "My phone battery is almost empty.",
        "How do plants turn sunlight into food?",
        "Please send a message to the whole team.",
        "What year did the first person walk on the moon?",
        "I forgot where I parked the car.",
        "Can dogs see colours the way we do?",
        "Book a table for two at eight o'clock.",
        "How far is the moon from the earth?",
        "The train was late again this morning.",
        "What are some good exercises for back pain?",
        "Thank you, that was very helpful.",
        # Numbers, names, places and dates.
        "What is 15 times 4?",
        "How many people live in Tokyo?",
        "Who was Albert Einstein?",
        "Set a timer for 25 minutes.",
        "What happened in 1969?",
        "Is Berlin bigger than Paris?",
        "Call Maria at 6 tonight.",
        "What is the weather like in London next Monday?",
        "How do I get from Boston to New York by train?",
        "My birthday is on the 3rd of March.",
        "Wake me up at 7:30 tomorrow.",
        "Who painted the Mona Lisa?",
        "How old is Queen Elizabeth's castle in Windsor?",
        "Translate good morning into Spanish.",
        "Add eggs, milk and bread to my shopping list.",
        "What is the square root of 144?",
        "When does the museum in Amsterdam open on Sunday?",
        "Ask David if he wants to play tennis on Friday.",
        "Why do cats sleep so much?",
        "Hi.",
        "Stop.",
        "What are the three largest countries in Africa, and which one has the most people living in it today?",
    ),
    # French, German and Spanish: everyday questions of the same kind, numbers in words.
    "fr": (
        "Quel temps fera-t-il demain à Paris ?",
        "Peux-tu allumer la lumière de la cuisine, s'il te plaît ?",
        "Je voudrais réserver une table pour deux personnes ce soir.",
        "À quelle heure part le prochain train pour Lyon ?",
        "Rappelle-moi d'appeler ma sœur demain après-midi.",
        "Qu'est-ce que je pourrais cuisiner pour le dîner ?",
        "Mets de la musique douce dans le salon.",
        "Combien de temps faut-il pour aller à l'aéroport ?",
        "Quelle est la plus haute montagne du monde ?",
        "Envoie un message à toute l'équipe.",
        "J'ai oublié où j'ai garé la voiture.",
        "La réunion a été déplacée à jeudi.",
        "Comment les plantes transforment-elles la lumière en nourriture ?",
        "Ajoute du lait, des œufs et du pain à ma liste de courses.",
        "Pourquoi les chats dorment-ils autant ?",
        "Merci beaucoup, c'était très utile.",
        "Qui a peint la Joconde ?",
        "Est-ce qu'il va pleuvoir ce week-end ?",
    ),
    "de": (
        "Wie wird das Wetter morgen in Berlin?",
        "Kannst du bitte das Licht in der Küche einschalten?",
        "Ich möchte heute Abend einen Tisch für zwei Personen reservieren.",
        "Wann fährt der nächste Zug nach München?",
        "Erinnere mich daran, morgen Nachmittag meine Schwester anzurufen.",
        "Was soll ich heute Abend kochen?",
        "Spiel bitte entspannte Musik im Wohnzimmer.",
        "Wie lange dauert die Fahrt zum Flughafen?",
        "Wie hoch ist der höchste Berg der Welt?",
        "Schick eine Nachricht an das ganze Team.",
        "Ich habe vergessen, wo ich das Auto geparkt habe.",
        "Das Treffen wurde auf Donnerstag verschoben.",
        "Wie verwandeln Pflanzen Sonnenlicht in Nahrung?",
        "Setz Milch, Eier und Brot auf meine Einkaufsliste.",
        "Warum schlafen Katzen so viel?",
        "Vielen Dank, das war sehr hilfreich.",
        "Wer hat die Mona Lisa gemalt?",
        "Wird es am Wochenende regnen?",
    ),
    "es": (
        "¿Qué tiempo hará mañana en Madrid?",
        "¿Puedes encender la luz de la cocina, por favor?",
        "Quiero reservar una mesa para dos personas esta noche.",
        "¿A qué hora sale el próximo tren para Barcelona?",
        "Recuérdame llamar a mi hermana mañana por la tarde.",
        "¿Qué puedo cocinar para la cena de hoy?",
        "Pon música tranquila en el salón.",
        "¿Cuánto tiempo se tarda en llegar al aeropuerto?",
        "¿Cuál es la montaña más alta del mundo?",
        "Envía un mensaje a todo el equipo.",
        "Olvidé dónde aparqué el coche.",
        "La reunión se ha cambiado al jueves.",
        "¿Cómo convierten las plantas la luz del sol en alimento?",
        "Añade leche, huevos y pan a mi lista de la compra.",
        "¿Por qué los gatos duermen tanto?",
        "Muchas gracias, ha sido muy útil.",
        "¿Quién pintó la Mona Lisa?",
        "¿Va a llover este fin de semana?",
    ),
}

# espeak-ng voices per language (`espeak-ng --voices=<lang>`; +f3, +m7 are variants).
VOICES: dict[str, tuple[str, ...]] = {
    "en": ("en-us", "en-gb", "en-us+f3", "en-us+m7"),
    "fr": ("fr", "fr+f3"),
    "de": ("de", "de+m7"),
    "es": ("es", "es-419+f3"),
}
RATES = (140, 175, 210)  # words per minute: slow, espeak-ng's default, fast

DEFAULT_SETTINGS = ["stock", "b1w10", "b2w10", "b3w10", "b5w10", "b1w15", "b5w15", "b1w30", "b5w30"]
SETTING = re.compile(r"^b(\d+)w(\d+(?:\.\d+)?)(d?)([fs]?)$")
# Per detecting setting, per clip (by id): the language detected and its probability.
DETECTED: dict[str, dict[int, tuple[str, float]]] = defaultdict(dict)

ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
ORDINALS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}


def number_words(n: int) -> str:
    """English words of 0 <= n < 10**6, as people say them (years 1100-1999 in two pairs)."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    if 1100 <= n < 2000 and n % 100:
        return number_words(n // 100) + " " + number_words(n % 100)
    if n < 1000:
        return ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    return number_words(n // 1000) + " thousand" + ("" if n % 1000 == 0 else " " + number_words(n % 1000))


def ordinal_words(n: int) -> str:
    words = number_words(n).split()
    last = words[-1]
    words[-1] = ORDINALS.get(last) or (last[:-1] + "ieth" if last.endswith("y") else last + "th")
    return " ".join(words)


def _digits_to_words(match: re.Match[str]) -> str:
    number, suffix = int(match.group(1)), match.group(2)
    if number >= 10**6:
        return match.group(0)
    return ordinal_words(number) if suffix else number_words(number)


def normalise(text: str) -> str:
    """Lower case, words only, one spelling, numbers in words (see the module's docstring)."""
    text = text.lower().replace("-", " ").replace(":", " ")  # "sixty-nine", "7:30" -> "7 30"
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)  # "1,000"
    text = re.sub(r"\b(\d+)(st|nd|rd|th)?\b", _digits_to_words, text)
    words = [SPELLING.get(w.strip(".,?!'\""), w) for w in text.split()]
    return " ".join("".join(c for c in " ".join(words) if c.isalnum() or c.isspace()).split())


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    import jiwer

    return float(jiwer.wer([normalise(r) for r in references], [normalise(h) for h in hypotheses]))


@dataclass(frozen=True)
class Clip:
    language: str
    text: str
    voice: str
    rate: int
    audio: Float32Array


def clips(languages: list[str], limit: int | None = None, pause_s: float = 0.2, lead_s: float = 0.3) -> list[Clip]:
    made: list[Clip] = []
    for language in languages:
        for q, text in enumerate(QUESTIONS[language][:limit]):
            for v, voice in enumerate(VOICES[language]):
                rate = RATES[(q + v) % len(RATES)]
                pcm = silence(lead_s) + speak(text, voice=voice, words_per_minute=rate) + silence(pause_s)
                made.append(Clip(language, text, voice, rate, pcm16_to_float(pcm)))
    return made


Decoder = Callable[[Clip], str]


def decoder(setting: str, recognizer: FasterWhisperRecognizer) -> Decoder:
    """A function that transcribes a clip with `setting` on the shared model."""
    if setting == "stock":

        def stock(clip: Clip) -> str:
            # language is the one thing given: the stock decode would detect it (tiny.en has only one).
            segments, _ = recognizer.model.transcribe(
                clip.audio, language=clip.language if recognizer.multilingual else None, vad_filter=False
            )
            return " ".join(s.text.strip() for s in segments).strip()

        return stock
    match = SETTING.match(setting)
    if not match:
        raise SystemExit(f"unknown setting {setting!r}: 'stock' or b<beam>w<window s>, e.g. b1w10")
    beam, window, detect = int(match.group(1)), float(match.group(2)), bool(match.group(3))
    silence_padding = {"f": False, "s": True}.get(match.group(4), recognizer.silence_padding)  # else the engine's

    def fast_path(clip: Clip) -> str:
        recognizer.beam_size, recognizer.encoder_window_s = beam, window
        recognizer.silence_padding = silence_padding
        result = recognizer.transcribe(clip.audio, None if detect else clip.language, threading.Event())
        if detect:
            DETECTED[setting][id(clip)] = (result.language, result.language_probability)
        return result.text

    return fast_path


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, help="stock and/or b<beam>w<window s>")
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=list(CATALOGUE), help="embedded Whisper model")
    parser.add_argument("--model-path", type=Path, default=None, help="CTranslate2 Whisper model; overrides --model")
    parser.add_argument("--languages", nargs="+", default=["en"], choices=sorted(QUESTIONS))
    parser.add_argument(
        "--detect-among", nargs="+", default=[], help="detection chooses among these (PARLEY_ASR_DETECT_LANGUAGES)"
    )
    parser.add_argument("--questions", type=int, default=None, help="only the first N questions (a quick look)")
    parser.add_argument("--pause-ms", type=int, default=200, help="silence after each clip's words")
    parser.add_argument("--lead-ms", type=int, default=300, help="silence before them (the VAD's padding)")
    parser.add_argument("--timing-clips", type=int, default=40, help="clips re-decoded for timing (0: none)")
    parser.add_argument("--timing-passes", type=int, default=3, help="timing passes over those clips")
    parser.add_argument("--show", default="short story about a cat", help="print every setting's text of this")
    parser.add_argument("--json", type=Path, default=None, help="also write all transcripts here")
    args = parser.parse_args()

    recognizer = FasterWhisperRecognizer(
        choose_model(args.model, args.model_path), "cpu", "int8", 0, 1, 10.0, frozenset(args.detect_among)
    )
    if not recognizer.multilingual and args.languages != ["en"]:
        raise SystemExit("an English-only model: --languages en")
    audio = clips(args.languages, args.questions, args.pause_ms / 1000, args.lead_ms / 1000)
    print(f"{len(audio)} clips, {os.cpu_count()} cores, load {load_average()}", flush=True)
    decoders = {s: decoder(s, recognizer) for s in args.settings}
    for decode in decoders.values():
        decode(audio[0])  # warm up each path once

    hypotheses: dict[str, list[str]] = {}
    for setting, decode in decoders.items():
        hypotheses[setting] = [decode(clip) for clip in audio]

    timings: dict[str, list[float]] = defaultdict(list)  # per pass: median ms
    timed = audio[:: max(1, len(audio) // args.timing_clips)] if args.timing_clips else []
    loads = [load_average()]
    for _ in range(args.timing_passes if timed else 0):
        times: dict[str, list[float]] = defaultdict(list)
        for clip in timed:
            for setting, decode in decoders.items():
                started = time.perf_counter()
                decode(clip)
                times[setting].append(time.perf_counter() - started)
        for setting, values in times.items():
            timings[setting].append(statistics.median(values) * 1000)
        loads.append(load_average())

    report: list[dict[str, Any]] = []
    for setting in args.settings:
        said = hypotheses[setting]
        row: dict[str, Any] = {
            "setting": setting,
            "wer": round(word_error_rate([c.text for c in audio], said), 4),
            "decode_ms_p50": round(statistics.median(timings[setting])) if timings[setting] else None,
            "decode_ms_passes": [round(t) for t in timings[setting]],
        }
        for key in ("language", "voice", "rate"):
            groups: dict[str, list[int]] = defaultdict(list)
            for i, clip in enumerate(audio):
                groups[f"{key}:{getattr(clip, key)}"].append(i)
            for group, index in groups.items():
                row[group] = round(word_error_rate([audio[i].text for i in index], [said[i] for i in index]), 4)
        if setting in DETECTED:
            for language in args.languages:
                found = [DETECTED[setting][id(c)] for c in audio if c.language == language]
                right = sum(detected == language for detected, _ in found)
                row[f"detected:{language}"] = f"{right}/{len(found)}"
                row[f"probability:{language}"] = round(statistics.mean(p for _, p in found), 3)
        shown = [i for i, c in enumerate(audio) if args.show.lower() in c.text.lower()]
        row["shown_right"] = f"{sum(normalise(said[i]) == normalise(audio[i].text) for i in shown)}/{len(shown)}"
        row["shown"] = sorted({said[i] for i in shown})
        print(json.dumps(row), flush=True)
        report.append(row)
    print(f"timing: {len(timed)} clips x {args.timing_passes} passes; load average per pass: {' | '.join(loads)}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "report": report,
                    "loads": loads,
                    "clips": [
                        {"text": c.text, "voice": c.voice, "rate": c.rate, **{s: hypotheses[s][i] for s in hypotheses}}
                        for i, c in enumerate(audio)
                    ],
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
