from __future__ import annotations

import pytest

from parley.registry import InstanceRecord, ServiceEvent
from parley_gateway.config import DiscoverySettings
from parley_gateway.routing.discovery import Instance, NoInstance, ServiceDirectory


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
    d = ServiceDirectory(nc=None, settings=DiscoverySettings(1, 0.1, 3, 300))  # type: ignore[arg-type]
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


def engines(instance_id: str, runs: str, active: int = 0, capacity: int = 2) -> InstanceRecord:
    """A TTS instance that registered running `runs` (its NATS metadata: comma-separated engines)."""
    return record(instance_id, active, capacity).model_copy(update={"engine": runs})


def test_a_stream_that_needs_an_engine_goes_only_to_instances_that_run_it() -> None:
    # "piper" is idle and would win on load; "both" is the only one that runs FireRedTTS2.
    d = directory(engines("piper", "piper"), engines("both", "piper,fireredtts2", active=1))
    assert d.instances["tts"]["both"].engines == {"piper", "fireredtts2"}
    assert d.pick("tts").record.id == "piper"
    assert d.pick("tts", engines=frozenset({"piper"})).record.id == "piper"
    for _ in range(3):
        assert d.pick("tts", engines=frozenset({"fireredtts2"})).record.id == "both"
    # Even the instance that holds the conversation's context is passed over if it cannot speak it.
    assert d.pick("tts", prefer="piper", engines=frozenset({"fireredtts2"})).record.id == "both"
    # Full, it is still the only one that can: the least loaded of those that run the engine.
    d.instances["tts"]["both"].record = engines("both", "piper,fireredtts2", active=5)
    assert d.pick("tts", engines=frozenset({"fireredtts2"})).record.id == "both"
    assert [i.record.id for i in d.ready("tts", frozenset({"fireredtts2"}))] == ["both"]


def test_with_no_instance_running_the_engine_the_refusal_names_it() -> None:
    d = directory(engines("piper", "piper"), engines("both", "piper,fireredtts2"))
    d.on_event(ServiceEvent(event="stopping", kind="tts", id="both", address="both:1"))
    with pytest.raises(NoInstance, match="fireredtts2") as refused:
        d.pick("tts", engines=frozenset({"fireredtts2"}))
    assert refused.value.engines == {"fireredtts2"}
    assert d.pick("tts").record.id == "piper"  # what needs no engine still goes there
    # Tried and gone is not "no such engine": the usual answer, so the caller's fail-over logic applies.
    d = directory(engines("both", "piper,fireredtts2"))
    with pytest.raises(NoInstance) as refused:
        d.pick("tts", exclude=frozenset({"both"}), engines=frozenset({"fireredtts2"}))
    assert refused.value.engines == frozenset()
    # Nothing ready at all: the service is missing, not the engine.
    d.instances["tts"]["both"].serving = False
    with pytest.raises(NoInstance) as refused:
        d.pick("tts", engines=frozenset({"fireredtts2"}))
    assert refused.value.engines == frozenset()
