"""The one retry and fail-over policy for calls to the model services.

Which gRPC outcomes another instance may fix, how often a reply's TTS stream moves on when
its instance dies mid-reply, and how soon a session-long stream (voice detection) starts
over. Callers outside `routing` never look at gRPC status codes: a `ServiceError` says
whether it is `retryable`.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

# The instance is gone or full: another one can take the call.
RETRYABLE_STATUSES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


@dataclass(frozen=True)
class RetryPolicy:
    # A reply's TTS stream whose instance dies mid-reply moves to another this often (re-speaking
    # from the sentence that was cut); a stream that has not answered yet fails over freely.
    midstream_failovers: int = 2
    # A whole-session stream (voice detection) whose instance went away starts again after this.
    restart_after_s: float = 1.0

    @staticmethod
    def retryable(status: grpc.StatusCode | None) -> bool:
        """Whether another instance may serve a call that ended with `status`."""
        return status in RETRYABLE_STATUSES


DEFAULT_POLICY = RetryPolicy()
