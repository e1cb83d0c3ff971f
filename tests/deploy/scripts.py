"""The deployment scripts in deploy/ as modules (they import each other as siblings, as `python deploy/x.py` does)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def deploy_module(name: str) -> ModuleType:
    if str(DEPLOY) not in sys.path:
        sys.path.insert(0, str(DEPLOY))
    return importlib.import_module(name)
