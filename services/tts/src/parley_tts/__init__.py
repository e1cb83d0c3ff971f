"""Parley TTS service: `TextToSpeech/Synthesize` and `ListVoices` over gRPC."""
