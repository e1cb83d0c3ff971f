"""The TextToSpeech gRPC methods: each hands its request to the part that does that job.

- speech in one voice (`Synthesize`, `Speak`): `speech_calls.SpeechCalls`;
- dialogue (`SynthesizeDialogue`): `dialogue_calls.DialogueCalls`;
- voices (`CreateVoice`, `GetVoice`, `DeleteVoice`, `ListVoices`): `voice_library.VoiceLibrary`,
  which also resolves the voice every speech request names.

Here only what every method shares: no call before the models are loaded, a refusal becomes the
call's status, and a client that went away mid-reply gets no answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from parley.audio.v1.audio_pb2 import AudioChunk
from parley.refusals import refused_for
from parley.server import ServiceRuntime
from parley.streams import StreamAborted
from parley.tts.v1 import tts_pb2, tts_pb2_grpc
from parley_tts.config import TtsSettings
from parley_tts.dialogue_calls import DialogueCalls
from parley_tts.refusal import Refused
from parley_tts.speech import Conversations, Engines
from parley_tts.speech_calls import SpeechCalls, SpeechOutput
from parley_tts.voice_library import VoiceLibrary

Answer = TypeVar("Answer")


class TextToSpeechServicer(tts_pb2_grpc.TextToSpeechServicer):
    def __init__(self, settings: TtsSettings, runtime: ServiceRuntime) -> None:
        self.settings = settings
        self.runtime = runtime
        self.engines = Engines()
        self.conversations = Conversations(settings.max_conversations)
        self.voices = VoiceLibrary(settings, self.engines)
        output = SpeechOutput(settings, self.voices)
        self.speech = SpeechCalls(settings, runtime, self.voices, output, self.conversations)
        self.dialogue = DialogueCalls(settings, runtime, self.voices, output)

    async def _check_loaded(self, context: grpc.aio.ServicerContext) -> None:
        if not self.engines.ready:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "TTS model is still loading")

    async def _streamed(
        self, answers: AsyncIterator[Answer], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Answer]:
        """A streaming method's answers (grpc.aio streams from an async generator method: each method is one)."""
        await self._check_loaded(context)
        try:
            async for answer in answers:
                yield answer
        except StreamAborted:
            return  # the client went away (barge-in): nothing to answer
        except Refused as refused:
            await context.abort(refused.code, refused.message, refused_for(refused.reason))

    async def _answered(self, answer: Callable[[], Awaitable[Answer]], context: grpc.aio.ServicerContext) -> Answer:
        await self._check_loaded(context)
        try:
            return await answer()
        except Refused as refused:
            await context.abort(refused.code, refused.message, refused_for(refused.reason))
            raise  # not reached: abort raises

    # ---- speech ------------------------------------------------------------------------------------

    async def Synthesize(  # noqa: N802 (gRPC method name)
        self, request: tts_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[AudioChunk]:
        async for answer in self._streamed(self.speech.synthesize(request, context), context):
            yield answer

    async def Speak(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterable[tts_pb2.SpeakRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.SpeakResponse]:
        async for answer in self._streamed(self.speech.speak(request_iterator, context), context):
            yield answer

    async def SynthesizeDialogue(  # noqa: N802 (gRPC method name)
        self, request: tts_pb2.DialogueRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.DialogueResponse]:
        async for answer in self._streamed(self.dialogue.synthesize_dialogue(request, context), context):
            yield answer

    # ---- voices ------------------------------------------------------------------------------------

    async def CreateVoice(  # noqa: N802 (gRPC method name)
        self, request: tts_pb2.CreateVoiceRequest, context: grpc.aio.ServicerContext
    ) -> tts_pb2.Voice:
        return await self._answered(lambda: self.voices.create(request), context)

    async def GetVoice(  # noqa: N802 (gRPC method name)
        self, request: tts_pb2.GetVoiceRequest, context: grpc.aio.ServicerContext
    ) -> tts_pb2.Voice:
        return await self._answered(lambda: self.voices.get(request.id), context)

    async def DeleteVoice(  # noqa: N802 (gRPC method name)
        self, request: tts_pb2.DeleteVoiceRequest, context: grpc.aio.ServicerContext
    ) -> tts_pb2.DeleteVoiceResponse:
        await self._answered(lambda: self.voices.delete(request.id), context)
        return tts_pb2.DeleteVoiceResponse()

    async def ListVoices(  # noqa: N802 (gRPC method name)
        self, request: tts_pb2.ListVoicesRequest, context: grpc.aio.ServicerContext
    ) -> tts_pb2.ListVoicesResponse:
        return await self._answered(lambda: self.voices.list_voices(request.engine), context)
