"""The gateway's HTTP API over the real stack: the official `openai` SDK, and /v1/voices with httpx."""

from __future__ import annotations

import io
import re

import av
import httpx
import jiwer
import numpy as np
import openai
import pytest
import soundfile

from tests.speech import silence, speak, wav_bytes
from tests.stack import Stack

pytestmark = pytest.mark.integration

SENTENCE = "The quick brown fox jumps over the lazy dog, then runs into the forest."


@pytest.fixture
def client(stack: Stack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="not-needed", max_retries=0, timeout=120)


def words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


def decoded(data: bytes) -> tuple[str, float]:
    """The container FFmpeg finds in a file of any format, and the seconds of audio in it."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return container.format.name, float(samples / stream.rate)


def encoded(pcm: bytes, fmt: str, codec: str, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")  # type: ignore[call-overload]
        frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fmt", "container", "media_type"),
    [
        ("wav", "wav", "audio/wav"),
        ("mp3", "mp3", "audio/mpeg"),
        ("opus", "ogg", "audio/ogg"),
        ("flac", "flac", "audio/flac"),
        ("aac", "aac", "audio/aac"),
    ],
)
async def test_speech_through_the_openai_sdk_in_every_format(
    client: openai.AsyncOpenAI, fmt: str, container: str, media_type: str
) -> None:
    async with client.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="alloy",
        input="Hello from Parley. This is a test of the speech endpoint.",
        response_format=fmt,
    ) as response:
        assert response.headers["content-type"] == media_type
        pieces = [piece async for piece in response.iter_bytes()]
    found, seconds = decoded(b"".join(pieces))
    assert found == container and 2.0 < seconds < 8.0, (found, seconds)


async def test_raw_pcm_is_24khz_and_audible(client: openai.AsyncOpenAI) -> None:
    response = await client.audio.speech.create(model="piper", voice="joe", input="Hello there!", response_format="pcm")
    samples = np.frombuffer(response.content, dtype="<i2") / 32768
    assert 0.5 < samples.size / 24000 < 3 and np.sqrt(np.mean(samples**2)) > 0.02


async def test_speech_errors_are_clear(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="unknown voice 'nobody'"):
        await client.audio.speech.create(model="tts-1", voice="nobody", input="Hi.")
    with pytest.raises(openai.BadRequestError, match=r"speed 3 is outside 0\.5-2\.0"):
        await client.audio.speech.create(model="tts-1", voice="joe", input="Hi.", speed=3.0)
    with pytest.raises(openai.BadRequestError, match="unknown model 'tts-9'"):
        await client.audio.speech.create(model="tts-9", voice="joe", input="Hi.")
    with pytest.raises(openai.BadRequestError, match="input"):
        await client.audio.speech.create(model="tts-1", voice="joe", input="")
    with pytest.raises(openai.BadRequestError, match="fireredtts2"):
        await client.audio.speech.create(model="fireredtts2", voice="joe", input="Hi.")


async def test_transcriptions_through_the_openai_sdk(client: openai.AsyncOpenAI) -> None:
    pcm = silence(0.7) + speak(SENTENCE) + silence(1.5) + speak("Please water the plants every morning.") + silence(0.5)
    plain = await client.audio.transcriptions.create(model="whisper-1", file=("talk.wav", wav_bytes(pcm)))
    heard = words(plain.text).split(" please")[0]
    assert jiwer.wer(words(SENTENCE), heard) < 0.4, plain.text  # tiny.en on espeak-ng: "round-fark stumps"

    as_mp3 = encoded(pcm, "mp3", "libmp3lame")
    verbose = await client.audio.transcriptions.create(
        model="whisper-1", file=("talk.mp3", as_mp3), response_format="verbose_json", language="en"
    )
    assert verbose.language == "english" and abs(verbose.duration - len(pcm) / 32000) < 0.2
    assert verbose.segments is not None and len(verbose.segments) == 2
    first, second = verbose.segments
    assert first.start < 1.0 < first.end < second.start and "plants" in second.text.lower()

    srt = await client.audio.transcriptions.create(
        model="whisper-1", file=("a.ogg", encoded(pcm, "ogg", "libopus")), response_format="srt"
    )
    assert str(srt).startswith("1\n00:00:0") and "\n2\n" in str(srt)
    vtt = await client.audio.transcriptions.create(
        model="whisper-1", file=("a.flac", encoded(pcm, "flac", "flac")), response_format="vtt"
    )
    assert str(vtt).startswith("WEBVTT") and "-->" in str(vtt)
    text = await client.audio.transcriptions.create(
        model="whisper-1", file=("q.wav", wav_bytes(pcm)), response_format="text"
    )
    assert "lazy dog" in str(text).lower() and "plants" in str(text).lower()

    with pytest.raises(openai.BadRequestError, match="could not be read as audio"):
        await client.audio.transcriptions.create(model="whisper-1", file=("notes.wav", b"just some words\n" * 50))
    silent = await client.audio.transcriptions.create(model="whisper-1", file=("s.wav", wav_bytes(silence(2.0))))
    assert silent.text == ""


async def test_voices_can_be_made_listed_and_deleted(stack: Stack) -> None:
    reference = wav_bytes(speak(SENTENCE))
    async with httpx.AsyncClient(base_url=stack.url, timeout=120) as http:
        listed = (await http.get("/v1/voices")).json()
        assert listed["cloning_available"] is False and "joe" in {v["id"] for v in listed["voices"]}

        made = await http.post(
            "/v1/voices",
            data={"name": "Fox Reader", "transcript": SENTENCE, "language": "en"},
            files={"file": ("reader.wav", reference, "audio/wav")},
        )
        assert made.status_code == 201, made.text
        voice = made.json()
        assert voice["cloned"] and voice["engines"] == [] and voice["id"].startswith("fox-reader-")
        assert 3 < voice["reference_duration_s"] < 8
        assert voice["id"] in {v["id"] for v in (await http.get("/v1/voices")).json()["voices"]}
        assert (await http.get(f"/v1/voices/{voice['id']}")).json()["name"] == "Fox Reader"

        preview = await http.get(f"/v1/voices/{voice['id']}/preview")
        assert preview.status_code == 400 and "fireredtts2" in preview.json()["error"]["message"]
        assert (await http.get("/v1/voices/joe/preview")).status_code == 200

        bad = await http.post(
            "/v1/voices",
            data={"name": "Noise", "transcript": "nothing"},
            files={"file": ("x.wav", b"not audio at all" * 100, "audio/wav")},
        )
        assert bad.status_code == 400 and "could not be read as audio" in bad.json()["error"]["message"]
        short = await http.post(
            "/v1/voices",
            data={"name": "Short", "transcript": "Hi."},
            files={"file": ("x.wav", wav_bytes(speak("Hi.")), "audio/wav")},
        )
        assert short.status_code == 400 and "at least 3 s" in short.json()["error"]["message"]

        assert (await http.delete(f"/v1/voices/{voice['id']}")).json() == {"id": voice["id"], "deleted": True}
        gone = await http.get(f"/v1/voices/{voice['id']}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
        remaining = {v["id"] for v in (await http.get("/v1/voices")).json()["voices"]}
        assert remaining.isdisjoint({voice["id"]}) and not any(v.startswith(("noise-", "short-")) for v in remaining)


async def test_a_dialogue_job_streams_reports_progress_and_downloads(stack: Stack) -> None:
    script = " ".join(
        f"[S{speaker}] {line}"
        for speaker, line in [
            (1, "Welcome to the show, today we talk about gardens."),
            (2, "Thanks for having me, I love gardens."),
            (3, "What grows best in the shade?"),
            (4, "Ferns, mostly, and moss."),
        ]
    )
    async with httpx.AsyncClient(base_url=stack.url, timeout=120) as http:
        made = await http.post("/v1/dialogues", json={"script": script})
        assert made.status_code == 202, made.text
        job = made.json()
        assert job["status"] == "running" and job["turns_total"] == 4

        streamed = bytearray()
        async with http.stream("GET", job["audio_url"]) as audio:
            assert audio.headers["content-type"] == "audio/wav"
            async for piece in audio.aiter_bytes():
                streamed += piece
        done = (await http.get(f"/v1/dialogues/{job['id']}")).json()
        assert done["status"] == "done" and done["progress"] == 1.0 and done["turns_done"] == 4
        assert [t["speaker"] for t in done["turns"]] == [1, 2, 3, 4]
        assert all(t["end_s"] - t["start_s"] > 0.8 for t in done["turns"]), done["turns"]

        wav = await http.get(done["download_url"])
        assert wav.headers["content-disposition"].endswith(f'{job["id"]}.wav"')
        samples, rate = soundfile.read(io.BytesIO(wav.content), dtype="int16")
        assert rate == 24000 and abs(samples.size / rate - done["audio_s"]) < 0.01
        assert bytes(streamed[44:]) == samples.tobytes()  # what streamed is the same audio
        for turn in done["turns"]:
            part = samples[int(turn["start_s"] * rate) : int(turn["end_s"] * rate)] / 32768
            assert np.sqrt(np.mean(part**2)) > 0.02  # every line is spoken

        bad = await http.post("/v1/dialogues", json={"script": "no speaker tags"})
        assert bad.status_code == 400 and "speaker tag" in bad.json()["error"]["message"]
        unknown = await http.post("/v1/dialogues", json={"script": "[S1] Hi.", "voices": {"1": "nobody"}})
        assert unknown.status_code == 404
        assert (await http.get("/v1/dialogues/dlg-nothing")).status_code == 404
        assert (await http.delete(f"/v1/dialogues/{job['id']}")).json()["deleted"] is True
        assert (await http.get(f"/v1/dialogues/{job['id']}")).status_code == 404


async def test_the_api_is_documented_at_docs(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url) as http:
        assert (await http.get("/docs")).status_code == 200
        paths = (await http.get("/openapi.json")).json()["paths"]
    for path in ("/v1/audio/speech", "/v1/audio/transcriptions", "/v1/voices", "/v1/dialogues", "/v1/monitor/stream"):
        assert path in paths, path
