"""Parley ASR service: `SpeechRecognition/Transcribe` over gRPC."""
