"""Text generators. A new LLM backend is one new module here."""
