"""The storage operations the OTA service adds: batched chunk counters and reported versions (both backends)."""

from __future__ import annotations

from cloud.storage import Firmware, RolloutState, Storage


async def test_chunk_counters_are_added_in_batches_with_their_time(storage: Storage, clock) -> None:
    session = await storage.start_ota_session("dev", "1.0.5", 100)
    served_at = clock.now + 5
    clock.advance(7)
    after = await storage.record_ota_chunk(session.session_id, 64 * 1024, chunks=64, at=served_at)
    assert (after.chunks_served, after.bytes_served, after.last_activity) == (64, 64 * 1024, served_at)
    after = await storage.record_ota_chunk(session.session_id, 1024)
    assert (after.chunks_served, after.last_activity) == (65, clock.now)


async def test_a_reported_version_is_noted_only_for_known_devices(storage: Storage) -> None:
    assert await storage.note_firmware_version("stranger", "1.0.4") is False
    assert await storage.get_device("stranger") is None
    await storage.register_device("dev")
    assert await storage.note_firmware_version("dev", "1.0.5") is True
    assert (await storage.get_device("dev")).firmware_version == "1.0.5"


async def test_a_device_keeps_its_place_in_finished_rollouts(storage: Storage) -> None:
    await storage.add_firmware(Firmware("1.0.5", "ecowatt-esp32", "firmware_1.0.5_encrypted.bin", 4096, 4112,
                                        "aa" * 32, "bb" * 32, 5, {"version": "1.0.5"}))
    first = await storage.create_rollout("first", "1.0.5", ["dev"])
    second = await storage.create_rollout("second", "1.0.5", ["dev", "other"])
    await storage.set_rollout_state(second.id, RolloutState.COMPLETED)
    assert (await storage.rollout_for_device("dev"))[0].id == first.id  # only active ones offer
    assert [(r.name, t.device_id) for r, t in await storage.device_rollouts("dev")] == [
        ("second", "dev"), ("first", "dev")]
    assert await storage.device_rollouts("nobody") == []
