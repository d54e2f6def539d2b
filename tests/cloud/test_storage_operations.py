"""Devices, operator tokens, commands, configuration, OTA, diagnostics, faults and the outbox, on both backends."""

from __future__ import annotations

import asyncio

import pytest

from cloud.storage import (
    CommandStatus,
    ConfigStatus,
    Firmware,
    OutboxMessage,
    RolloutState,
    SessionStatus,
    Storage,
)
from protocol.errors import DocumentError
from tests.cloud.storage_uploads import upload

KEY = "2b7e151628aed2a6abf7158809cf4f3c762e7160f38b4da56a784d9045190cfe"


# --- devices and tokens ---


async def test_device_keys_are_registered_replaced_and_kept(storage: Storage) -> None:
    await storage.register_device("dev", KEY.upper())
    assert (await storage.get_device("dev")).key_hex == KEY  # stored as lowercase hex
    await storage.register_device("dev", "00" * 32)
    await storage.register_device("dev")  # no key given: the current one stays
    assert (await storage.get_device("dev")).key_hex == "00" * 32
    assert await storage.get_device("nobody") is None


@pytest.mark.parametrize("bad", ["abc", "zz" * 32, KEY + "00"])
async def test_a_malformed_key_is_refused_without_echoing_it(storage: Storage, bad: str) -> None:
    with pytest.raises(DocumentError) as caught:
        await storage.register_device("dev", bad)
    assert bad.lower() not in str(caught.value)
    assert await storage.get_device("dev") is None


async def test_contact_updates_last_seen_and_reported_firmware(storage: Storage, clock) -> None:
    await storage.register_device("dev", KEY)
    first = clock.now
    await storage.touch_device("dev", firmware_version="1.0.4")
    clock.advance(30)
    device = await storage.touch_device("dev")  # a contact that reports no version keeps the last one
    assert (device.first_seen, device.last_seen, device.firmware_version) == (first, first + 30, "1.0.4")
    assert (await storage.set_device_state("dev", "retired")).state == "retired"
    assert [d.device_id for d in await storage.list_devices()] == ["dev"]


async def test_operator_tokens_are_found_by_hash_and_revoked(storage: Storage) -> None:
    await storage.add_operator_token("alice", "AA" * 32)
    assert (await storage.find_operator_token("aa" * 32)).name == "alice"
    await storage.add_operator_token("alice", "bb" * 32)  # a new token replaces the old one
    assert await storage.find_operator_token("aa" * 32) is None
    assert await storage.revoke_operator_token("alice") is True
    assert await storage.list_operator_tokens() == []


# --- commands ---


async def test_commands_are_leased_redelivered_then_timed_out(storage: Storage, clock) -> None:
    first = await storage.enqueue_command("dev", "set_power", {"power_value": 5000}, command_id="CMD_1000_1")
    second = await storage.enqueue_command("dev", "get_power_stats")

    deliveries = []
    for _ in range(3):
        leased = await storage.lease_command("dev", lease_seconds=10, max_deliveries=3)
        assert await storage.lease_command("dev", lease_seconds=10, max_deliveries=3) is None  # one in flight
        deliveries.append((leased.command_id, leased.delivery_count, leased.params))
        clock.advance(10)
    assert deliveries == [("CMD_1000_1", n, {"power_value": 5000}) for n in (1, 2, 3)]

    # the third lease ran out: the first command is given up, the next one comes
    leased = await storage.lease_command("dev", lease_seconds=10, max_deliveries=3)
    assert leased.command_id == second.command_id
    timed_out = await storage.get_command(first.command_id)
    assert (timed_out.status, timed_out.completed_at) == (CommandStatus.TIMED_OUT, clock.now)


async def test_a_result_completes_the_command_once(storage: Storage) -> None:
    command = await storage.enqueue_command("dev", "set_power_percentage", {"percentage": 50})
    assert await storage.complete_command(command.command_id, CommandStatus.COMPLETED) is None  # not delivered
    await storage.lease_command("dev")
    done = await storage.complete_command(command.command_id, CommandStatus.COMPLETED, "executed successfully")
    assert (done.status, done.result, done.lease_expires_at) == (
        CommandStatus.COMPLETED, "executed successfully", None)
    assert await storage.complete_command(command.command_id, CommandStatus.FAILED) is None
    assert (await storage.get_command(command.command_id)).status is CommandStatus.COMPLETED
    assert await storage.complete_command("no-such-id", CommandStatus.FAILED) is None
    assert await storage.lease_command("dev") is None
    counts = await storage.command_counts()
    assert counts[CommandStatus.COMPLETED] == 1 and sum(counts.values()) == 1


async def test_a_late_result_of_a_timed_out_command_is_still_recorded(storage: Storage, clock) -> None:
    command = await storage.enqueue_command("dev", "set_power", {"power_value": 1})
    await storage.lease_command("dev", lease_seconds=5, max_deliveries=1)
    clock.advance(5)
    assert await storage.expire_commands(max_deliveries=1) == 1
    late = await storage.complete_command(command.command_id, CommandStatus.FAILED, "Command set_power: failed")
    assert late.status is CommandStatus.FAILED


async def test_concurrent_polls_deliver_a_command_once(storage: Storage) -> None:
    await storage.enqueue_command("dev", "set_power", {"power_value": 100})
    leases = await asyncio.gather(*(storage.lease_command("dev") for _ in range(20)))
    assert sum(lease is not None for lease in leases) == 1


async def test_command_history_is_newest_first(storage: Storage) -> None:
    for kind in ("a", "b", "c"):
        await storage.enqueue_command("dev", kind)
    await storage.enqueue_command("other", "z")
    assert [c.type for c in await storage.list_commands("dev")] == ["c", "b", "a"]
    assert len(await storage.list_commands()) == 4


# --- configuration ---


async def test_config_is_delivered_once_per_change_and_acknowledged(storage: Storage, clock) -> None:
    await storage.set_config("dev", {"poll_s": 5})
    await storage.set_config("dev", {"poll_s": 9})  # before any poll: version 1 is superseded
    delivered = await storage.take_config_change("dev")
    assert (delivered.version, delivered.config, delivered.status) == (2, {"poll_s": 9}, ConfigStatus.DELIVERED)
    assert await storage.take_config_change("dev") is None  # nothing changed since

    acked = await storage.ack_config("dev", "accepted", {"accepted": ["poll_s"], "rejected": [], "unchanged": []})
    assert (acked.version, acked.status, acked.ack_outcome) == (2, ConfigStatus.ACKNOWLEDGED, "accepted")

    await storage.set_config("dev", {"poll_s": 9, "registers": [0, 99]})
    await storage.take_config_change("dev")
    details = {"rejected": [{"field": "registers", "reason": "no register 99"}]}
    await storage.ack_config("dev", "rejected", details, version=3)

    history = await storage.config_history("dev")
    assert [(v.version, v.status, v.ack_outcome) for v in history] == [
        (3, ConfigStatus.ACKNOWLEDGED, "rejected"),
        (2, ConfigStatus.ACKNOWLEDGED, "accepted"),
        (1, ConfigStatus.SUPERSEDED, None),
    ]
    assert history[0].ack_details == details and history[0].acked_at == clock.now
    assert (await storage.current_config("dev")).version == 3


async def test_an_ack_with_nothing_delivered_is_not_recorded(storage: Storage) -> None:
    assert await storage.ack_config("dev", "accepted") is None
    await storage.set_config("dev", {"poll_s": 5})
    assert await storage.ack_config("dev", "accepted") is None  # pending, not delivered yet
    assert await storage.ack_config("dev", "accepted", version=7) is None


async def test_concurrent_config_changes_get_distinct_versions(storage: Storage) -> None:
    versions = await asyncio.gather(*(storage.set_config("dev", {"n": n}) for n in range(10)))
    assert sorted(v.version for v in versions) == list(range(1, 11))
    pending = [v for v in await storage.config_history("dev") if v.status is ConfigStatus.PENDING]
    assert len(pending) == 1


async def test_concurrent_revisions_each_see_the_one_before(storage: Storage) -> None:
    def add(n: int):  # type: ignore[no-untyped-def]
        return lambda latest: {"items": [*(latest.config["items"] if latest else []), n]}

    await asyncio.gather(*(storage.revise_config("dev", add(n)) for n in range(10)))
    assert sorted((await storage.current_config("dev")).config["items"]) == list(range(10))


# --- OTA ---


def firmware(version: str, counter: int) -> Firmware:
    return Firmware(version, "ecowatt-esp32", f"firmware/firmware_{version}_encrypted.bin", 4096, 4112, "aa" * 32,
                    "bb" * 32, counter, {"version": version, "chunk_size": 1024, "total_chunks": 5})


async def test_firmware_versions_are_immutable_and_ordered_by_counter(storage: Storage) -> None:
    assert (await storage.add_firmware(firmware("1.0.6", 6))).manifest["version"] == "1.0.6"
    await storage.add_firmware(firmware("1.0.5", 5))
    assert await storage.add_firmware(firmware("1.0.5", 9)) is None
    assert (await storage.get_firmware("1.0.5")).security_counter == 5
    assert [f.version for f in await storage.list_firmware()] == ["1.0.5", "1.0.6"]


async def test_ota_sessions_replace_expire_count_and_finish(storage: Storage, clock) -> None:
    first = await storage.start_ota_session("dev", "1.0.5", 5)
    second = await storage.start_ota_session("dev", "1.0.5", 5)  # re-initiation is always allowed
    assert (await storage.get_ota_session(first.session_id)).status is SessionStatus.REPLACED
    assert (await storage.active_ota_session("dev")).session_id == second.session_id

    clock.advance(3)
    served = await storage.record_ota_chunk(second.session_id, 1024)
    assert (served.chunks_served, served.bytes_served, served.last_activity) == (1, 1024, clock.now)
    assert await storage.record_ota_chunk(first.session_id, 1024) is None  # not active

    clock.advance(299)
    assert await storage.expire_ota_sessions(idle_seconds=300) == 0
    clock.advance(1)
    assert await storage.expire_ota_sessions(idle_seconds=300) == 1
    assert await storage.active_ota_session("dev") is None

    third = await storage.start_ota_session("dev", "1.0.5", 5, session_id="dev_1.0.5_1")
    done = await storage.finish_ota_session("dev_1.0.5_1", SessionStatus.COMPLETED)
    assert (done.status, done.finished_at) == (SessionStatus.COMPLETED, clock.now)
    assert await storage.finish_ota_session(third.session_id, SessionStatus.FAILED) is None
    stats = await storage.ota_stats()
    assert (stats["completed"], stats["expired"], stats["replaced"], stats["bytes_served"]) == (1, 1, 1, 1024)
    assert [s.session_id for s in await storage.list_ota_sessions("dev")][0] == "dev_1.0.5_1"


async def test_a_reported_firmware_version_is_noted_for_known_devices_only(storage: Storage) -> None:
    await storage.register_device("dev", KEY)
    assert await storage.note_firmware_version("dev", "1.0.4") is True
    assert await storage.note_firmware_version("stranger", "1.0.4") is False
    assert (await storage.get_device("dev")).firmware_version == "1.0.4"
    assert await storage.get_device("stranger") is None


async def test_ota_reports_keep_their_order_and_time(storage: Storage, clock) -> None:
    for kind in ("progress", "verification", "reboot", "boot_confirmation"):
        await storage.add_ota_report("dev", kind, status="ok", detail={"kind": kind}, session_id="s1")
        clock.advance(1)
    reports = await storage.list_ota_reports("dev")
    assert [r.kind for r in reports] == ["progress", "verification", "reboot", "boot_confirmation"]
    assert reports[-1].reported_at - reports[0].reported_at == 3
    assert [r.kind for r in await storage.list_ota_reports("dev", after_id=reports[1].id)] == [
        "reboot", "boot_confirmation"]


async def test_rollouts_target_named_devices(storage: Storage) -> None:
    await storage.add_firmware(firmware("1.0.5", 5))
    rollout = await storage.create_rollout("canary", "1.0.5", ["b", "a", "a"])
    assert [t.device_id for t in rollout.targets] == ["a", "b"]

    found = await storage.rollout_for_device("a")
    assert found is not None and found[0].version == "1.0.5" and found[1].state == "pending"
    assert await storage.rollout_for_device("c") is None

    target = await storage.update_rollout_target(rollout.id, "a", "succeeded", "booted 1.0.5")
    assert (target.state, target.detail) == ("succeeded", "booted 1.0.5")
    assert [t.state for t in (await storage.get_rollout(rollout.id)).targets] == ["succeeded", "pending"]

    await storage.set_rollout_state(rollout.id, RolloutState.PAUSED)
    assert await storage.rollout_for_device("b") is None  # a paused rollout offers nothing
    assert [r.state for r in await storage.list_rollouts()] == [RolloutState.PAUSED]


# --- diagnostics and faults ---


async def test_diagnostics_keep_the_newest_per_device(storage: Storage, clock) -> None:
    for n in range(5):
        await storage.add_diagnostic("dev", {"n": n, "nested": {"ok": True}}, keep=3)
        clock.advance(1)
    await storage.add_diagnostic("other", {"n": 0})
    assert [d.document["n"] for d in await storage.list_diagnostics("dev")] == [4, 3, 2]
    summary = {s.device_id: s for s in await storage.diagnostics_summary()}
    assert summary["dev"].entries == 3 and summary["dev"].last_at - summary["dev"].first_at == 2
    assert await storage.delete_diagnostics("dev") == 3
    assert [d.device_id for d in await storage.list_diagnostics()] == ["other"]


async def test_fault_rules_apply_expire_and_clear(storage: Storage, clock) -> None:
    everyone = await storage.add_fault_rule("http_503", probability=0.5)
    await storage.add_fault_rule("delay", device_id="dev", duration=60, params={"seconds": 2})
    await storage.add_fault_rule("drop", device_id="other")

    assert [r.kind for r in await storage.active_fault_rules("dev")] == ["http_503", "delay"]
    clock.advance(60)
    assert [r.kind for r in await storage.active_fault_rules("dev")] == ["http_503"]
    assert await storage.clear_fault_rules("other") == 1
    assert [r.id for r in await storage.active_fault_rules()] == [everyone.id]
    assert await storage.clear_fault_rules() == 1
    assert await storage.active_fault_rules() == []


async def test_injected_faults_are_logged(storage: Storage) -> None:
    await storage.log_fault("http_503", "/process", device_id="dev", rule_id=1, detail={"status": 503})
    await storage.log_fault("http_503", "/changes", device_id="dev")
    await storage.log_fault("corrupt_chunk", "/ota/chunk/dev", device_id="other")
    events = await storage.fault_events(device_id="dev")
    assert [(e.kind, e.target) for e in events] == [("http_503", "/changes"), ("http_503", "/process")]
    assert events[1].detail == {"status": 503}
    assert await storage.fault_counts() == {"corrupt_chunk": 1, "http_503": 2}


# --- outbox ---


async def test_outbox_claims_lease_publish_and_purge(storage: Storage, clock) -> None:
    await storage.ingest(upload("dev", 1))
    await storage.enqueue_messages([OutboxMessage("ecowatt/dev/state", '{"on":1}', qos=1, retain=True)])

    claimed = await storage.claim_outbox(limit=10, lease_seconds=30)
    assert [(m.topic, m.retain) for m in claimed] == [("ecowatt/dev/telemetry", False), ("ecowatt/dev/state", True)]
    assert await storage.claim_outbox() == []  # claimed by someone else
    clock.advance(30)
    reclaimed = await storage.claim_outbox(limit=10)  # the claimant died: the lease ran out
    assert [m.id for m in reclaimed] == [m.id for m in claimed]

    assert await storage.mark_published([claimed[0].id]) == 1
    assert await storage.release_outbox([claimed[1].id]) == 1
    assert [m.id for m in await storage.claim_outbox()] == [claimed[1].id]  # released: claimable at once
    await storage.mark_published([claimed[1].id])
    assert await storage.pending_outbox() == 0

    clock.advance(10)
    assert await storage.purge_outbox(published_before=clock.now) == 2
    assert await storage.list_outbox() == []


async def test_concurrent_claims_never_share_a_message(storage: Storage) -> None:
    await storage.enqueue_messages([OutboxMessage("t", str(n)) for n in range(30)])
    batches = await asyncio.gather(*(storage.claim_outbox(limit=7) for _ in range(6)))
    ids = [m.id for batch in batches for m in batch]
    assert len(ids) == len(set(ids)) == 30
