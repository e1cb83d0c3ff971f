"""The gateway's HTTP API, one router per area (OpenAPI docs at /docs).

- `speech`: OpenAI-compatible `POST /v1/audio/speech`;
- `transcriptions`: OpenAI-compatible `POST /v1/audio/transcriptions`;
- `voices`: `/v1/voices`, stored (cloned) and built-in voices;
- `dialogues`: `/v1/dialogues`, scripts spoken as jobs with progress, streamed and downloaded.

Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, so the
official `openai` SDK raises its usual exceptions with our messages.
"""
