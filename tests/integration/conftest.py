"""The whole stack started as `make run` starts it, on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.stack import Stack, start_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    try:
        running = start_stack(tmp_path_factory.mktemp("parley-state"))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield running
    running.stop()
