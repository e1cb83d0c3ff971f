"""The reply's prompt read while the user still speaks.

Once a turn ends, the LLM must read the user's words (and its chat template) before its first
token: ~20 tokens of a spoken question take it ~150 ms on two CPU cores, on the voice-to-voice
path. The partial transcripts say most of those words earlier. Each one is sent as a prefill
(`GenerateRequest.prefill_only`): the LLM service reads the conversation with the words so far
into a model copy's cache, and the reply that follows finds them there and reads only the rest.

One prefill at a time per conversation: a partial that comes while one is read waits, and only
the newest waiting one is sent. A reply starting takes over: nothing waiting is sent any more,
and the reply's request waits for the prefill still being read (~50-100 ms), whose KV stream it
then finds free and filled; sent at once it would find that stream busy and read its whole
prompt elsewhere (measured: 79 tokens, 0.7 s, under load). A prefill that fails costs nothing
but its saving: the reply reads its whole prompt, as without it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from parley.llm.v1 import llm_pb2
from parley_gateway.routing.model_services import ModelServices, ServiceError

log = logging.getLogger(__name__)


class PromptPrefill:
    """Partial transcripts of one conversation's turn, read into the LLM's cache one at a time."""

    def __init__(self, services: ModelServices, request_for: Callable[[str], llm_pb2.GenerateRequest]) -> None:
        """request_for: the request the reply would send for these words (the same prompt, so the same tokens)."""
        self.services = services
        self.request_for = request_for
        self._waiting: str | None = None
        self._sent: str | None = None
        self._task: asyncio.Task[None] | None = None

    def heard(self, text: str) -> None:
        """A partial transcript of the turn so far."""
        text = text.strip()
        if not text or text == self._sent:
            return
        self._waiting = text
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    def hand_over(self) -> asyncio.Task[None] | None:
        """A reply is starting: nothing waiting is read any more; the prefill still being read, if one is,
        for the reply to wait for."""
        self._waiting, self._sent = None, None
        return self._task if self._task is not None and not self._task.done() else None

    async def close(self) -> None:
        self._waiting = None
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while self._waiting is not None:
            text, self._waiting = self._waiting, None
            self._sent = text
            request = self.request_for(text)
            request.prefill_only = True
            try:
                async for _ in self.services.generate(request):
                    pass
            except ServiceError as exc:
                log.debug("prefill not read: %s", exc.message)
