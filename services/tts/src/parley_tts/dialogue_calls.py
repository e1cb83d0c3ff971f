"""`SynthesizeDialogue`: an `[S1]`-`[S4]` script (or its turns) spoken by one engine, turn after turn.

Every speaker's voice is resolved before the first line and handed to the engine's memory at once
(`Context.cast`), as FireRedTTS2's authors prompt a dialogue; each turn's audio streams as it is made,
then a `TurnDone` with its length and, for a cloned voice, its cloning score.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from parley.audio.v1.audio_pb2 import AudioChunk
from parley.pcm import Float32Array, float_to_pcm16
from parley.server import ServiceRuntime
from parley.tts.v1 import tts_pb2
from parley_tts.config import TtsSettings
from parley_tts.engines.base import Utterance
from parley_tts.refusal import Refused, checked_rate_and_speed, checked_text
from parley_tts.script import Line, ScriptError, check_lines, parse_script
from parley_tts.speech_calls import SpeechOutput
from parley_tts.voice_library import Voice, VoiceLibrary


class DialogueCalls:
    def __init__(
        self, settings: TtsSettings, runtime: ServiceRuntime, voices: VoiceLibrary, output: SpeechOutput
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.voices = voices
        self.output = output

    async def synthesize_dialogue(
        self, request: tts_pb2.DialogueRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.DialogueResponse]:
        lines = self._script(request)
        checked_rate_and_speed(request.sample_rate, 0)
        voices = await self._cast(request, {line.speaker for line in lines})
        engines = {v.engine.name for v in voices.values()}
        if len(engines) > 1:
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the speakers' voices belong to different engines ({', '.join(sorted(engines))}); "
                "one dialogue is spoken by one engine",
            )
        engine = next(iter(voices.values())).engine
        out_rate = request.sample_rate or engine.rate_of(next(iter(voices.values())).voice)
        memory = engine.new_context()
        # Every speaker's voice is known before the first line: an engine that keeps the speakers'
        # prompts puts them all first, as FireRedTTS2's authors do for a dialogue.
        memory.cast({speaker: voice.voice for speaker, voice in voices.items()})
        async with self.runtime.stream("SynthesizeDialogue", context):
            started = tts_pb2.DialogueStarted(
                turns_total=len(lines), speakers=[line.speaker for line in lines], sample_rate=out_rate
            )
            yield tts_pb2.DialogueResponse(started=started)
            for index, line in enumerate(lines):
                sent = 0
                heard: list[Float32Array] = []
                voice = voices[line.speaker]
                if line.text:
                    text = checked_text(line.text, self.settings.max_text_chars)
                    utterance = Utterance(text, voice.voice, speaker=voice.speaker)
                    async for samples in self.output.audio(voice, utterance, memory, out_rate, heard):
                        chunk = AudioChunk(pcm=float_to_pcm16(samples), sample_rate=out_rate, start_s=sent / out_rate)
                        yield tts_pb2.DialogueResponse(audio=chunk, turn=index)
                        sent += samples.size
                score = await self.output.similarity(voice, heard)
                done = tts_pb2.TurnDone(
                    turn=index, turns_total=len(lines), audio_s=sent / out_rate, speaker_similarity=score
                )
                yield tts_pb2.DialogueResponse(turn=index, turn_done=done)

    def _script(self, request: tts_pb2.DialogueRequest) -> list[Line]:
        if request.turns and request.script:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "give the dialogue as `turns` or as `script`, not both")
        try:
            lines = (
                [Line(turn.speaker, turn.text.strip()) for turn in request.turns]
                if request.turns
                else parse_script(request.script)
            )
            s = self.settings
            check_lines(lines, s.max_script_turns, s.max_script_chars, s.max_text_chars)
        except ScriptError as exc:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        return lines

    async def _cast(self, request: tts_pb2.DialogueRequest, speakers: set[int]) -> dict[int, Voice]:
        """The voice of every speaker: the one asked for, or the engine's own voice for that speaker.

        The engine's default voice speaks as the line's speaker (Piper gives each a pitch of its
        own), and so does every voice of a cloning engine (its speaker tags are part of the model);
        a voice chosen for a speaker on another engine speaks as itself.
        """
        unknown = set(request.voices) - {1, 2, 3, 4}
        if unknown:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"voices for unknown speakers {sorted(unknown)}")
        cast: dict[int, Voice] = {}
        for speaker in speakers:
            voice = await self.voices.resolve(request.voices.get(speaker, ""), request.engine)
            voice.speaker = speaker if voice.engine.cloning or speaker not in request.voices else 1
            cast[speaker] = voice
        return cast
