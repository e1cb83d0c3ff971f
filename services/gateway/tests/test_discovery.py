from __future__ import annotations

import pytest

from parley.registry import InstanceRecord, ServiceEvent
from parley_gateway.discovery import Instance, NoInstance, ServiceDirectory


def record(instance_id: str, active: int, capacity: int, ready: bool = True) -> InstanceRecord:
    return InstanceRecord(
        id=instance_id,
        kind="tts",
        address=f"{instance_id}:1",
        version="0",
        ready=ready,
        active=active,
        capacity=capacity,
    )


def directory(*records: InstanceRecord) -> ServiceDirectory:
    d = ServiceDirectory(nc=None, interval_s=1, window_s=0.1, ttl_s=3)  # type: ignore[arg-type]
    d.instances["tts"] = {r.id: Instance(r, last_seen=0.0, serving=True) for r in records}
    return d


def test_least_loaded_ready_instance_wins() -> None:
    d = directory(record("a", 3, 4), record("b", 1, 4), record("c", 0, 4, ready=False))
    assert d.pick("tts").record.id == "b"
    assert d.pick("tts", exclude=frozenset({"b"})).record.id == "a"


def test_streams_opened_since_the_last_report_count() -> None:
    d = directory(record("a", 0, 2), record("b", 0, 2))
    d.instances["tts"]["a"].opened_since_report = 2
    assert d.pick("tts").record.id == "b"


def test_nothing_ready_is_reported_by_kind() -> None:
    d = directory(record("a", 0, 2, ready=False))
    with pytest.raises(NoInstance, match="tts"):
        d.pick("tts")
    assert "tts" in d.missing()


async def test_silent_instances_are_forgotten() -> None:
    d = directory(record("a", 0, 2), record("b", 0, 2))
    d.instances["tts"]["a"].last_seen = 100.0
    d.instances["tts"]["b"].last_seen = 103.0
    d._expire(now=104.0)  # ttl 3 s: "a" has been silent for 4 s
    assert list(d.instances["tts"]) == ["b"]


def test_instances_lost_while_our_own_nats_is_down_are_not_crashes() -> None:
    d = directory(record("a", 0, 2), record("b", 0, 2))
    d.instances["tts"]["a"].last_seen = 100.0
    d.instances["tts"]["b"].last_seen = 103.0
    d._expire(now=104.0, crashed=False)  # the poll failed: NATS, not the instance
    assert "a" not in d.instances["tts"] and d.troubled() == {}
    d._expire(now=107.0)  # NATS answers, the instance does not: it vanished without a goodbye
    assert d.troubled()["tts"]["crashes"] == 1


def test_a_conversation_stays_on_its_instance_while_that_has_room() -> None:
    d = directory(record("a", 0, 2), record("b", 3, 2))  # b is busier (and full: no queue)
    assert d.pick("tts", prefer="b").record.id == "a"  # full: the preference yields
    d.instances["tts"]["b"].record = record("b", 1, 2)
    assert d.pick("tts", prefer="b").record.id == "b"  # room: the conversation's instance, though busier
    assert d.pick("tts").record.id == "a"


def test_an_instance_whose_grpc_health_has_not_said_serving_gets_no_stream() -> None:
    d = directory(record("a", 0, 2), record("b", 0, 2))
    d.instances["tts"]["b"].serving = False  # registered on NATS; its address never answered SERVING
    assert [d.pick("tts").record.id for _ in range(3)] == ["a"] * 3
    d.instances["tts"]["a"].serving = False
    with pytest.raises(NoInstance):
        d.pick("tts")


def test_a_stopping_instance_gets_no_new_stream_and_its_goodbye_is_no_crash() -> None:
    d = directory(record("a", 0, 2), record("b", 1, 2))
    d.on_event(ServiceEvent(event="stopping", kind="tts", id="a", address="a:1"))
    assert d.pick("tts").record.id == "b"
    d.instances["tts"]["b"].record = record("b", 1, 2).model_copy(update={"draining": True})
    assert d.missing() == ["vad", "asr", "llm", "tts"]  # its load record says draining too
    d.forget("tts", "a", "left NATS")
    assert d.troubled() == {}


async def test_streams_on_a_forgotten_instance_keep_their_channel_until_they_end() -> None:
    """A draining instance leaves NATS once its streams are done; closing the channel earlier would cut them."""
    d = directory(record("a", 0, 2))
    async with d.lease("tts") as instance:
        channel = instance.channel
        assert channel is not None
        d.forget("tts", "a", "left NATS")
        assert instance.channel is channel  # still open for the stream in flight
    assert instance.channel is None  # the last stream ended: closed
