"""Speech-probability engines. A new VAD model is one new module here."""
