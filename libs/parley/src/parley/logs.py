"""One log format for every Parley process, so interleaved output stays readable."""

from __future__ import annotations

import logging
import sys


def setup_logging(process: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s {process:<7} %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # These libraries log every connection attempt at INFO.
    for noisy in ("nats", "httpx", "faster_whisper"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
