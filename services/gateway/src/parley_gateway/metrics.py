"""Prometheus metrics of the gateway: sessions and per-stage turn latency."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)

SESSIONS_ACTIVE = Gauge("parley_gateway_sessions_active", "Open conversation sessions")
SESSIONS_TOTAL = Counter("parley_gateway_sessions_total", "Conversation sessions opened")
ERRORS_TOTAL = Counter("parley_gateway_errors_total", "Error events sent to clients", ["code"])
RESPONSES_TOTAL = Counter("parley_gateway_responses_total", "Assistant responses by outcome", ["outcome"])
# Each stage is measured from the end of the user's turn (VAD decision,
# or the arrival of a text.input) to the named moment; `end_of_turn` is the
# VAD's turn model's time for each verdict on a pause.
STAGE_SECONDS = Histogram(
    "parley_gateway_stage_seconds", "Turn end to each pipeline stage", ["stage"], buckets=LATENCY_BUCKETS
)
PREEMPTIVE_TOTAL = Counter(
    "parley_gateway_preemptive_total", "Replies started at a pause, by whether the turn really ended there", ["outcome"]
)
TURN_ENDS_TOTAL = Counter(
    "parley_gateway_turn_ends_total",
    "User turns ended, by what ended them: silence (the VAD's rule), end_of_turn (judged complete at a pause), "
    "max_silence (judged incomplete, no more speech came), doubtful (the sound and the words disagreed, no more "
    "speech came within the shorter wait), commit",
    ["reason"],
)
BARGE_INS_TOTAL = Counter("parley_gateway_barge_ins_total", "Replies cut short by the user's speech")
LIMITED_TOTAL = Counter(
    "parley_gateway_limited_total",
    "Frames, events, requests and connections refused or cut by a per-client or per-gateway limit",
    ["limit"],
)
