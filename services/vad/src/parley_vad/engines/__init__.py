"""Speech-probability and end-of-turn engines. A new model is one new module here."""
