"""Speech synthesisers. A new TTS model is one new module here."""
