"""The command, configuration, diagnostics and fault services on both storage backends."""

from __future__ import annotations

import asyncio
import random

import pytest

from cloud import commands, diagnostics, remote_config
from cloud.commands import DeliveryPolicy, ResultOutcome
from cloud.faults import CORRUPT_CHUNK, WRONG_HASH, FaultService, FaultSpec
from cloud.remote_config import ConfigChange
from cloud.storage import CommandStatus, ConfigStatus, Storage
from protocol.config_message import ConfigAck, Rejection, parse_config_reply
from protocol.errors import DocumentError, RegisterError

POLICY = DeliveryPolicy(lease_seconds=10, max_deliveries=2)


# --- commands ---


async def test_a_command_is_redelivered_after_its_lease_then_timed_out(storage: Storage, clock) -> None:
    queued = await commands.queue_command(storage, "dev", "set_power_percentage", {"percentage": 40})
    first = await commands.deliver_next(storage, "dev", POLICY)
    assert first.command_id == queued.command_id
    assert await commands.deliver_next(storage, "dev", POLICY) is None  # leased: not handed out twice
    clock.advance(10)
    again = await commands.deliver_next(storage, "dev", POLICY)
    assert (again.command_id, again.delivery_count) == (queued.command_id, 2)
    clock.advance(10)
    assert await commands.deliver_next(storage, "dev", POLICY) is None
    status = await commands.command_status(storage, queued.command_id, POLICY)
    assert status.status is CommandStatus.TIMED_OUT


async def test_results_are_recorded_once_and_conflicts_reported(storage: Storage) -> None:
    queued = await commands.queue_command(storage, "dev", "get_power_stats", None)
    early = await commands.record_result(storage, queued.command_id, CommandStatus.COMPLETED, "ok")
    assert early.outcome is ResultOutcome.NOT_DELIVERED
    await commands.deliver_next(storage, "dev", POLICY)
    assert (await commands.record_result(storage, queued.command_id, CommandStatus.COMPLETED, "ok")).outcome \
        is ResultOutcome.RECORDED
    assert (await commands.record_result(storage, queued.command_id, CommandStatus.COMPLETED, "ok")).outcome \
        is ResultOutcome.DUPLICATE
    assert (await commands.record_result(storage, queued.command_id, CommandStatus.FAILED, "no")).outcome \
        is ResultOutcome.CONFLICT
    assert (await commands.record_result(storage, queued.command_id, CommandStatus.COMPLETED, "ok",
                                         device_id="other")).outcome is ResultOutcome.UNKNOWN
    assert (await storage.get_command(queued.command_id)).result == "ok"


@pytest.mark.parametrize(("kind", "parameters", "error"), [
    ("write_register", {"register_address": 0, "value": 5}, RegisterError),  # Vac1 is read-only
    ("write_register", {"register_address": 8, "value": 101}, RegisterError),
    ("set_power", {"power_value": 10_001}, DocumentError),
    ("launch_rocket", {}, DocumentError),
])
async def test_invalid_commands_are_refused_before_anything_is_stored(storage: Storage, kind, parameters,
                                                                      error) -> None:
    with pytest.raises(error):
        await commands.queue_command(storage, "dev", kind, parameters)
    assert await storage.list_commands("dev") == []


# --- configuration ---


async def test_a_change_made_before_delivery_carries_the_earlier_one(storage: Storage) -> None:
    await remote_config.set_config(storage, "dev", ConfigChange(poll_interval_s=7))
    await remote_config.set_config(storage, "dev", ConfigChange(registers=(0, 9)))
    reply, delivered = await remote_config.changes_reply(storage, "dev")
    assert delivered.version == 2
    assert (reply.changed, reply.poll_freq_changed, reply.new_poll_timer, reply.upload_freq_changed,
            reply.regs_changed, reply.regs_count, reply.regs) == (True, True, 7, False, True, 2, 0b10_0000_0001)
    again, none = await remote_config.changes_reply(storage, "dev")
    assert none is None and not again.changed and again.new_poll_timer == 7  # values kept, flags off


async def test_concurrent_operators_lose_no_change(storage: Storage) -> None:
    await asyncio.gather(
        remote_config.set_config(storage, "dev", ConfigChange(poll_interval_s=3)),
        remote_config.set_config(storage, "dev", ConfigChange(upload_interval_s=60)),
        remote_config.set_config(storage, "dev", ConfigChange(registers=(9,))),
    )
    reply, _ = await remote_config.changes_reply(storage, "dev")
    assert (reply.new_poll_timer, reply.new_upload_timer, reply.regs) == (3, 60, 1 << 9)
    assert reply.poll_freq_changed and reply.upload_freq_changed and reply.regs_changed


async def test_a_delivered_change_is_not_carried_into_the_next(storage: Storage) -> None:
    await remote_config.set_config(storage, "dev", ConfigChange(poll_interval_s=7))
    await remote_config.changes_reply(storage, "dev")
    await remote_config.set_config(storage, "dev", ConfigChange(upload_interval_s=30))
    reply, _ = await remote_config.changes_reply(storage, "dev")
    body = parse_config_reply(reply.to_json())  # as the firmware reads it
    assert (body.poll_freq_changed, body.new_poll_timer, body.upload_freq_changed, body.new_upload_timer) == \
        (False, 7, True, 30)


async def test_acknowledgements_are_recorded_with_their_outcome(storage: Storage) -> None:
    await remote_config.set_config(storage, "dev", ConfigChange(poll_interval_s=7, registers=(0, 1)))
    assert await remote_config.record_ack(storage, "dev", ConfigAck(accepted=("poll_interval",))) is None
    await remote_config.changes_reply(storage, "dev")
    ack = ConfigAck(accepted=("poll_interval",), rejected=(Rejection("registers", "no such thing"),))
    version = await remote_config.record_ack(storage, "dev", ack)
    assert (version.status, version.ack_outcome) == (ConfigStatus.ACKNOWLEDGED, "partial")
    assert version.ack_details["rejected"] == [{"field": "registers", "reason": "no such thing"}]


# --- diagnostics ---


async def test_diagnostics_keep_only_the_newest_per_device(storage: Storage, clock) -> None:
    policy = diagnostics.DiagnosticsPolicy(keep_per_device=3)
    for n in range(5):
        await diagnostics.store(storage, "dev", {"n": n}, policy)
        clock.advance(1)
    await diagnostics.store(storage, "other", {"n": 0}, policy)
    kept = await storage.list_diagnostics("dev", limit=10)
    assert [d.document["n"] for d in kept] == [4, 3, 2]
    summary = diagnostics.summary_view(await storage.diagnostics_summary())
    assert (summary["total_devices"], summary["total_entries"]) == (2, 4)


# --- faults ---


async def test_ota_faults_are_decided_per_device_and_logged(storage: Storage, clock) -> None:
    service = FaultService(storage, wall_clock=clock, rng=random.Random(1))
    await service.enable(FaultSpec(CORRUPT_CHUNK, device_id="dev", duration_s=60))
    assert service.decide("other", CORRUPT_CHUNK) is None
    assert service.decide("dev", WRONG_HASH) is None
    action = service.decide("dev", CORRUPT_CHUNK, target="GET /ota/chunk/dev")
    chunk = bytes(range(32))
    corrupted = action.corrupt(chunk)
    assert len(corrupted) == len(chunk) and sum(a != b for a, b in zip(chunk, corrupted, strict=True)) == 1
    await service.flush()
    [event] = await storage.fault_events()
    assert (event.kind, event.device_id, event.target) == (CORRUPT_CHUNK, "dev", "GET /ota/chunk/dev")
    clock.advance(60)  # the duration ran out
    assert service.decide("dev", CORRUPT_CHUNK) is None


async def test_rules_set_by_another_process_are_seen(storage: Storage, clock) -> None:
    mine = FaultService(storage, wall_clock=clock, refresh_seconds=0)
    theirs = FaultService(storage, wall_clock=clock)
    await theirs.enable(FaultSpec(WRONG_HASH))
    assert [r.kind for r in await mine.rules()] == [WRONG_HASH]
    assert mine.decide("dev", WRONG_HASH).wrong_hash("ab" * 32) != "ab" * 32
    await theirs.disable()
    await mine.refresh()
    assert mine.decide("dev", WRONG_HASH) is None
    await mine.flush()
