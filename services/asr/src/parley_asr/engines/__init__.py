"""Speech recognisers. A new ASR model is one new module here."""
