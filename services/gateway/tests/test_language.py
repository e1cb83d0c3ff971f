"""A conversation's language: the keep/switch rule, the voice a reply gets, and what the LLM is told."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from parley import refusals
from parley.audio.v1.audio_pb2 import AudioChunk
from parley.llm.v1 import llm_pb2
from parley.tts.v1 import tts_pb2
from parley_gateway.config import GatewaySettings
from parley_gateway.conversation.audio_ring import AudioRing
from parley_gateway.conversation.history import History, RecordedHistory
from parley_gateway.conversation.language import (
    LanguageRule,
    SessionLanguage,
    answer_instruction,
    base_language,
    language_name,
)
from parley_gateway.conversation.reply import Reply, ReplyContext, instruct
from parley_gateway.conversation.reply_voice import choose_voice
from parley_gateway.conversation.transcription import Heard, Transcription
from parley_gateway.protocol import ErrorCode
from parley_gateway.routing.model_services import ServiceError, TextRequests
from parley_gateway.routing.retry import RetryPolicy

RULE = LanguageRule(switch_probability=0.8, min_switch_audio_s=1.5)

# ---- the rule ---------------------------------------------------------------------------------------


def test_the_first_detected_language_is_taken_whatever_its_probability() -> None:
    assert RULE.switches("", "fr", 0.3, 0.4)
    assert not RULE.switches("", "", 0.0, 3.0)  # nothing detected: nothing to take


@pytest.mark.parametrize(
    ("detected", "probability", "audio_s", "switches"),
    [
        ("en", 0.99, 5.0, False),  # the same language
        ("de", 0.95, 2.0, True),  # clearly another: confident, on a long enough utterance
        ("de", 0.8, 1.5, True),  # at both limits
        ("de", 0.79, 5.0, False),  # not sure enough
        ("de", 0.99, 1.4, False),  # too short to judge ("ja", "ok")
    ],
)
def test_another_language_needs_a_confident_long_enough_utterance(
    detected: str, probability: float, audio_s: float, switches: bool
) -> None:
    assert RULE.switches("en", detected, probability, audio_s) is switches


def test_a_session_keeps_its_language_until_the_speaker_clearly_switches() -> None:
    language = SessionLanguage(None, RULE)
    assert language.current == ""
    assert language.heard("fr", 0.6, 1.0) and language.current == "fr"
    assert not language.heard("en", 0.7, 3.0) and language.current == "fr"  # a loan word, a name: kept
    assert not language.heard("en", 0.99, 0.5) and language.current == "fr"  # too short
    assert language.heard("en", 0.97, 2.5) and language.current == "en"


def test_a_language_asked_for_at_session_start_is_never_changed() -> None:
    language = SessionLanguage("fr", RULE)
    assert not language.heard("en", 1.0, 10.0)
    assert language.current == "fr"


def test_names_and_instructions() -> None:
    assert (
        language_name("fr") == "French" and language_name("zh") == "Chinese" and language_name("el") == "Modern Greek"
    )
    assert language_name("xx") == "xx"
    assert base_language("en_US") == "en" and base_language("pt-BR") == "pt"
    assert answer_instruction("fr") == "Answer in French."
    assert answer_instruction("en") == "" and answer_instruction("") == ""  # English: the request as it always was


def test_the_instruction_joins_the_system_prompt_else_the_users_words() -> None:
    with_system = llm_pb2.GenerateRequest(
        messages=[llm_pb2.Message(role="system", content="Be brief."), llm_pb2.Message(role="user", content="Salut")]
    )
    instruct(with_system, "Answer in French.")
    assert [m.content for m in with_system.messages] == ["Be brief.\n\nAnswer in French.", "Salut"]
    # Without one, the LLM service puts its default prompt first; a system message would replace it.
    without = llm_pb2.GenerateRequest(messages=[llm_pb2.Message(role="user", content="Salut")])
    instruct(without, "Answer in French.")
    assert [(m.role, m.content) for m in without.messages] == [("user", "Salut\n\nAnswer in French.")]
    untouched = llm_pb2.GenerateRequest(messages=[llm_pb2.Message(role="user", content="Hi")])
    instruct(untouched, "")
    assert untouched.messages[0].content == "Hi"


# ---- the voice ---------------------------------------------------------------------------------------


def voice(voice_id: str, language: str, engine: str, cloned: bool = False) -> tts_pb2.Voice:
    return tts_pb2.Voice(
        id=voice_id, language=language, engine="" if cloned else engine, engines=[engine], cloned=cloned
    )


LISTING = tts_pb2.ListVoicesResponse(
    voices=[
        voice("joe", "en", "piper"),
        voice("siwis", "fr", "piper"),
        voice("fireredtts2-random", "en,zh,ja,ko,fr,de,ru", "fireredtts2"),
        voice("ana-123456", "es", "fireredtts2", cloned=True),
    ],
    default_voice="joe",
)


@pytest.mark.parametrize(
    ("session_voice", "language", "chosen"),
    [
        ("", "en", "joe"),  # the default voice speaks it
        ("joe", "fr", "siwis"),  # the same engine's voice for the language
        ("joe", "zh", "fireredtts2-random"),  # else any engine's
        ("ana-123456", "ja", "ana-123456"),  # a cloned voice speaks its engine's languages
        ("ana-123456", "es", None),  # not its reference's language when its engine does not list it
        ("fireredtts2-random", "fr", "fireredtts2-random"),
        ("joe", "sw", None),  # nobody speaks Swahili
    ],
)
def test_the_reply_voice_speaks_its_language(session_voice: str, language: str, chosen: str | None) -> None:
    found = choose_voice(LISTING, session_voice, language)
    assert (found.id if found is not None else None) == chosen


def test_a_voice_no_running_engine_can_speak_is_no_choice() -> None:
    listing = tts_pb2.ListVoicesResponse(
        voices=[voice("joe", "en", "piper"), tts_pb2.Voice(id="ana-123456", language="fr", cloned=True)],
        default_voice="joe",
    )
    assert choose_voice(listing, "ana-123456", "fr") is None


# ---- a reply in a language ---------------------------------------------------------------------------


class Services:
    policy = RetryPolicy()

    def __init__(self, listing: tts_pb2.ListVoicesResponse | None, refuse: str | None = None) -> None:
        self.listing = listing
        self.refuse = refuse  # the reason the TTS instance names for refusing (None: it speaks)
        self.requests: list[llm_pb2.GenerateRequest] = []
        self.starts: list[tts_pb2.SpeakStart] = []
        self.lookups = 0

    async def generate(self, request: llm_pb2.GenerateRequest) -> AsyncIterator[llm_pb2.TextDelta]:
        self.requests.append(request)
        yield llm_pb2.TextDelta(text="Bonjour, je vais bien. ")
        yield llm_pb2.TextDelta(text="Et vous ?", finish_reason="stop")

    async def speak(
        self, start: tts_pb2.SpeakStart, pieces: TextRequests, owed_since: Callable[[], float | None]
    ) -> AsyncIterator[tts_pb2.SpeakResponse]:
        self.starts.append(start)
        if self.refuse is not None:
            raise ServiceError(
                ErrorCode.SERVICE_ERROR,
                "tts service: FAILED_PRECONDITION",
                grpc.StatusCode.FAILED_PRECONDITION,
                "this voice of the piper engine speaks en, not 'fr'"
                if self.refuse
                else "the stored voice 'ana' cannot be loaded: its reference audio is gone",
                refused_for=self.refuse,
            )
        index = 0
        async for _ in pieces():
            yield tts_pb2.SpeakResponse(audio=AudioChunk(pcm=bytes(3200), sample_rate=16000), piece=index)
            index += 1

    async def voice_list(self) -> tts_pb2.ListVoicesResponse | None:
        self.lookups += 1
        return self.listing


class Client:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any] | bytes] = []

    def __call__(self, message: dict[str, Any] | bytes) -> None:
        self.sent.append(message)

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if isinstance(m, dict) and m["type"] == kind]

    def reply_text(self, reply_id: str, text: str) -> None:
        pass

    def reply_audio_sent(self, reply_id: str, seconds: float) -> None:
        pass

    def reply_finished(self, reply_id: str) -> None:
        pass


class Clock:
    def now(self) -> float:
        return 10.0


def reply_context(services: Services, client: Client, history: History, voice_id: str = "") -> ReplyContext:
    return ReplyContext(
        services=services,  # type: ignore[arg-type]
        settings=GatewaySettings().conversation().reply,
        clock=Clock(),
        send=client,
        watcher=client,
        history=RecordedHistory(history),
        llm_request=lambda text: llm_pb2.GenerateRequest(messages=[llm_pb2.Message(role="user", content=text)]),
        speak_start=tts_pb2.SpeakStart(voice=voice_id, sample_rate=16000, conversation_id="sess_1"),
        name="test",
    )


async def answered(services: Services, language: str, voice_id: str = "") -> Client:
    client = Client()
    context = reply_context(services, client, History(10, 1000), voice_id)
    reply = Reply(context, "Comment ça va ?", held=False, turn_end=9.0, timings={}, language=language)
    async with asyncio.timeout(5):
        await reply.wait()
    return client


async def test_a_french_reply_is_asked_for_in_french_and_spoken_by_a_french_voice() -> None:
    services = Services(LISTING)
    client = await answered(services, "fr", voice_id="joe")
    assert services.requests[0].messages[-1].content == "Comment ça va ?\n\nAnswer in French."
    [start] = services.starts
    assert (start.language, start.voice, start.conversation_id) == ("fr", "siwis", "sess_1")
    assert client.events("response.done")[0]["status"] == "completed"
    assert any(isinstance(m, bytes) for m in client.sent) and not client.events("error")


async def test_an_english_reply_is_made_as_it_always_was() -> None:
    services = Services(LISTING)
    await answered(services, "en")
    assert services.requests[0].messages[-1].content == "Comment ça va ?"  # no instruction
    assert services.lookups == 0  # the default voices speak English: no lookup at all
    assert services.starts[0].voice == "" and services.starts[0].language == "en"
    chosen = Services(LISTING)
    await answered(chosen, "en", voice_id="joe")
    assert chosen.starts[0].voice == "joe" and chosen.starts[0].language == "en"
    unknown = Services(LISTING)
    await answered(unknown, "")
    assert unknown.starts[0].language == "" and unknown.lookups == 0


async def test_an_english_reply_in_a_session_with_a_german_voice_gets_an_english_one() -> None:
    listing = tts_pb2.ListVoicesResponse()
    listing.CopyFrom(LISTING)
    listing.voices.append(voice("thorsten", "de", "piper"))
    services = Services(listing)
    await answered(services, "en", voice_id="thorsten")
    assert services.starts[0].voice == "joe" and services.starts[0].language == "en"


class SlowListing(Services):
    """A TTS service whose voice list comes only when the test says so."""

    def __init__(self, listing: tts_pb2.ListVoicesResponse) -> None:
        super().__init__(listing)
        self.answer = asyncio.Event()
        self.llm_asked = asyncio.Event()

    async def generate(self, request: llm_pb2.GenerateRequest) -> AsyncIterator[llm_pb2.TextDelta]:
        self.llm_asked.set()
        async for delta in super().generate(request):
            yield delta

    async def voice_list(self) -> tts_pb2.ListVoicesResponse | None:
        await self.answer.wait()
        return await super().voice_list()


async def test_the_voice_lookup_does_not_hold_back_the_llm() -> None:
    services = SlowListing(LISTING)
    answering = asyncio.create_task(answered(services, "fr", voice_id="joe"))
    async with asyncio.timeout(5):
        await services.llm_asked.wait()
    assert services.starts == []  # the LLM writes while the voice is still being looked up
    services.answer.set()
    client = await answering
    assert services.starts[0].voice == "siwis" and client.events("response.done")[0]["status"] == "completed"
    assert services.requests[0].messages[-1].content.endswith("Answer in French.")


async def test_with_no_voice_for_the_language_the_reply_is_text_only_with_a_notice() -> None:
    services = Services(tts_pb2.ListVoicesResponse(voices=[voice("joe", "en", "piper")], default_voice="joe"))
    client = await answered(services, "fr")
    assert services.starts == []  # no TTS stream at all
    [notice] = client.events("error")
    assert notice["code"] == "voice_unavailable" and notice["language"] == "fr" and "French" in notice["message"]
    assert "".join(m["text"] for m in client.events("response.text.delta")) == "Bonjour, je vais bien. Et vous ?"
    done = client.events("response.done")[0]
    assert done["status"] == "completed" and done["text"] == "Bonjour, je vais bien. Et vous ?"
    assert not any(isinstance(m, bytes) for m in client.sent) and not client.events("response.audio.done")


class Unending(Services):
    """An LLM that writes one sentence and then nothing more (until the reply is cut short)."""

    def __init__(self, listing: tts_pb2.ListVoicesResponse) -> None:
        super().__init__(listing)
        self.wrote = asyncio.Event()

    async def generate(self, request: llm_pb2.GenerateRequest) -> AsyncIterator[llm_pb2.TextDelta]:
        yield llm_pb2.TextDelta(text="Bonjour, je vais bien. ")
        self.wrote.set()
        await asyncio.Event().wait()
        yield llm_pb2.TextDelta(text="never")


async def test_a_text_only_reply_cut_short_keeps_in_history_what_the_client_read() -> None:
    services = Unending(tts_pb2.ListVoicesResponse(voices=[voice("joe", "en", "piper")], default_voice="joe"))
    client, history = Client(), History(10, 1000)
    reply = Reply(reply_context(services, client, history), "Comment ça va ?", False, 9.0, {}, language="fr")
    async with asyncio.timeout(5):
        await services.wrote.wait()
        reply.cancel()
        await reply.wait()
    assert client.events("response.cancelled") and client.events("error")[0]["code"] == "voice_unavailable"
    assert [(turn.role, turn.content) for turn in history] == [
        ("user", "Comment ça va ?"),
        ("assistant", "Bonjour, je vais bien."),  # no audio, yet read: not an empty turn
    ]


async def test_a_tts_instance_that_refuses_the_language_gives_the_same_notice() -> None:
    services = Services(None, refuse=refusals.LANGUAGE)  # no voice list: the instance decides
    client = await answered(services, "fr")
    assert services.starts[0].language == "fr"
    [notice] = client.events("error")
    assert notice["code"] == "voice_unavailable" and "French" in notice["message"] and "not 'fr'" in notice["message"]
    assert client.events("response.done")[0]["status"] == "completed"


async def test_another_refusal_with_the_same_status_fails_the_reply_as_it_is() -> None:
    # FAILED_PRECONDITION is also a stored voice that cannot load: that is no language notice.
    services = Services(None, refuse="")
    client = await answered(services, "fr")
    [error] = client.events("error")
    assert error["code"] == "service_error" and not client.events("response.audio.done")
    assert client.events("response.done")[0]["status"] == "failed"


# ---- what the ASR says of a language ------------------------------------------------------------------


class Recognizer:
    policy = RetryPolicy()

    def __init__(self, error: ServiceError | None) -> None:
        self.error = error

    async def transcribe(self, audio: Any, metadata: Any, owed_since: Any) -> AsyncIterator[Any]:
        from parley.asr.v1 import asr_pb2

        if self.error is not None:
            raise self.error
        yield asr_pb2.Transcript(
            text="Bonjour à tous",
            is_final=True,
            language="fr",
            language_probability=0.93,
            audio_duration_s=1.8,
            confidence=0.81,
        )


async def transcribed(services: Recognizer, language: str | None) -> tuple[list[Heard], list[dict[str, Any]]]:
    heard: list[Heard] = []
    sent: list[dict[str, Any]] = []
    ring = AudioRing(16000, 5.0)
    ring.append(bytes(3200))
    transcription = Transcription(
        services,
        ring,
        1,
        0,
        language,
        sent.append,
        lambda _, h: heard.append(h),  # type: ignore[arg-type]
    )
    transcription.end()
    async with asyncio.timeout(5):
        await transcription.task
    return heard, sent


async def test_the_final_transcript_brings_its_language_and_how_sure_it_is() -> None:
    heard, sent = await transcribed(Recognizer(None), None)
    expected = Heard("Bonjour à tous", "fr", pytest.approx(0.93), pytest.approx(1.8), pytest.approx(0.81))  # type: ignore[arg-type]
    assert heard == [expected]
    assert sent == []


async def test_a_language_the_recogniser_refuses_gets_a_clear_notice() -> None:
    refused = ServiceError(
        ErrorCode.SERVICE_ERROR,
        "asr service: INVALID_ARGUMENT: the model tiny.en speaks English only",
        grpc.StatusCode.INVALID_ARGUMENT,
        "the model tiny.en speaks English only",
        refused_for=refusals.LANGUAGE,
    )
    heard, sent = await transcribed(Recognizer(refused), "fr")
    assert heard == [Heard(None)]
    [notice] = sent
    assert notice["code"] == "unsupported_language" and notice["language"] == "fr"
    assert "French" in notice["message"] and "tiny.en" in notice["message"]


async def test_another_refusal_of_the_recogniser_is_no_language_notice() -> None:
    refused = ServiceError(
        ErrorCode.SERVICE_ERROR,
        "asr service: INVALID_ARGUMENT: a chunk of 2000 ms; the limit is 1000 ms",
        grpc.StatusCode.INVALID_ARGUMENT,
        "a chunk of 2000 ms; the limit is 1000 ms",
    )
    heard, sent = await transcribed(Recognizer(refused), "fr")
    assert heard == [Heard(None)]
    [notice] = sent
    assert notice["code"] == "service_error" and "2000 ms" in notice["message"]
