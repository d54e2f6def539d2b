"""Acquisition: block reads, batches of 7, the firmware's compression choice and packet metadata."""

from __future__ import annotations

import base64

import pytest

from device_emulator.acquisition import FAILURE_MARKER, Acquisition
from device_emulator.packet_queue import PacketQueue
from device_emulator.profiles import PROFILES, REFERENCE, SPEC
from protocol.compression.decoded import DecodeStatus
from protocol.compression.firmware_base64 import decode_compressed_binary
from protocol.compression.packet import decode_packet
from protocol.compression.state import BUILTIN_PATTERNS, CodecState
from tests.device_emulator.core_support import ScriptedLink, make_context, vectors

CASES = vectors("compression_methods.json")["cases"]


def acquisition(tmp_path, profile, layout, script, queue=None):
    ctx = make_context(tmp_path, profile)
    link = ScriptedLink(ctx.profile, script, list(layout))
    queue = PacketQueue() if queue is None else queue
    return Acquisition(ctx, link, queue, list(layout), compression_time=lambda b: 1000), link


async def run_batch(acq: Acquisition, samples) -> None:
    for _ in samples:
        await acq.poll()


def packet_bytes(packet) -> bytes:
    return decode_compressed_binary(packet.compressed_binary, packet.metadata.compressed_size_bytes)


def _warm_up(case) -> list[list[list[int]]]:
    """Batches that bring a fresh device to the state a case needs: learned dictionary entries (a
    batch far from every entry is learned from its last sample), or a full temporal history whose last
    two batches ended with the given values."""
    state = case.get("decoder_state_required") or {}
    learned = state.get("dictionary_patterns", [])[len(BUILTIN_PATTERNS) :]
    if learned:
        return [[[pattern[reg] for reg in case["register_layout"]]] * 7 for pattern in learned]
    if "prev1_last_value_of_previous_batch" not in state:
        return []
    ((reg, prev1),) = state["prev1_last_value_of_previous_batch"].items()
    prev2 = state["prev2_last_value_of_batch_before"][reg]
    count = state["batches_compressed_since_boot_before_this_one"]
    return [[[prev2]] * 7] * (count - 1) + [[[prev1]] * 7]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
async def test_reference_emits_the_firmware_packet_for_the_vector_samples(case, tmp_path) -> None:
    warm_up = _warm_up(case)
    batches = [*warm_up, case["input_samples"]]
    script = [tuple(sample) for batch in batches for sample in batch]
    queue = PacketQueue(capacity=len(batches))
    acq, _ = acquisition(tmp_path, REFERENCE, case["register_layout"], script, queue)
    for batch in batches:
        await run_batch(acq, batch)
    packet = queue.snapshot()[-1]
    data = packet_bytes(packet)
    chosen = case["selected_by_smart_selection"]
    assert data[0] == int(chosen["first_byte"], 16)
    assert len(data) == chosen["sizes"][chosen["method"]]
    assert packet.metadata.register_layout == tuple(case["register_layout"])
    expected = bytes.fromhex(case["encoded_hex"])
    if data[0] == expected[0] and len(data) == len(expected):
        assert data == expected
        assert packet.metadata.method == case["label_in_metadata"]


async def test_block_read_spans_the_selection_and_picks_it_in_order(tmp_path) -> None:
    ctx = make_context(tmp_path)
    link = ScriptedLink(ctx.profile, [tuple(range(100, 105))])  # the block of registers 5..9
    acq = Acquisition(ctx, link, PacketQueue(), [9, 5, 7])
    assert await acq.poll() == [104, 100, 102]
    assert link.reads == [(5, 5)]


async def test_seven_samples_make_one_packet_with_millis_and_layout(tmp_path) -> None:
    case = CASES[0]
    acq, _ = acquisition(
        tmp_path, REFERENCE, case["register_layout"], [tuple(s) for s in case["input_samples"]]
    )
    acq.ctx.clock.now = 29.877
    await run_batch(acq, case["input_samples"][:6])
    assert len(acq.queue) == 0
    await acq.poll()
    (packet,) = acq.queue.snapshot()
    assert packet.metadata.timestamp == 29877
    assert packet.metrics.compression_time_us == 1000
    assert packet_bytes(packet).hex() == case["encoded_hex"]


async def test_failed_poll_drops_the_sample_and_is_logged(tmp_path) -> None:
    acq, _ = acquisition(tmp_path, REFERENCE, [0, 1], [None, (1, 2)])
    assert await acq.poll() is None
    assert await acq.poll() == [1, 2]
    assert acq.samples == [[1, 2]]
    assert acq.ctx.events.counters["poll_failures"] == 1


async def test_full_queue_drops_the_new_packet(tmp_path) -> None:
    queue = PacketQueue(capacity=1)
    acq, _ = acquisition(tmp_path, REFERENCE, [0], [(2400 + i,) for i in range(14)], queue)
    await run_batch(acq, range(14))
    assert len(queue) == 1 and queue.dropped == 1
    assert acq.ctx.events.counters["queue_overflows"] == 1


async def test_new_selection_discards_the_partial_batch(tmp_path) -> None:
    acq, _ = acquisition(tmp_path, SPEC, [0], [(1,), (2,)])
    await run_batch(acq, range(2))
    acq.set_selection([0, 1])
    assert acq.samples == []


# --- quirks -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("profile", "stored"), [(REFERENCE, [[FAILURE_MARKER]]), (SPEC, [])])
async def test_single_register_failure_marker(profile, stored, tmp_path) -> None:
    acq, _ = acquisition(tmp_path, profile, [9], [None])
    await acq.poll()
    assert acq.samples == stored
    multi, _ = acquisition(tmp_path / "multi", profile, [0, 9], [None])
    await multi.poll()
    assert multi.samples == []  # with several registers the sample is always dropped


# A batch equal to built-in pattern 3 except for a few values: the 0xD0 packet is the shortest but has
# zero deltas at positions >= 16, which its 16-bit mask cannot tell apart, so it cannot be decoded.
LAYOUT = (0, 1, 5, 9, 6, 7)
PATTERN = [BUILTIN_PATTERNS[3][reg] for reg in LAYOUT]
UNDECODABLE = [list(PATTERN) for _ in range(7)]
UNDECODABLE[0][0] += 3
UNDECODABLE[5][2] += 1


async def test_lossy_packets_chosen(tmp_path) -> None:
    script = [tuple(s) for s in UNDECODABLE]
    reference, _ = acquisition(tmp_path / "ref", REFERENCE, LAYOUT, script)
    await run_batch(reference, UNDECODABLE)
    sent = packet_bytes(reference.queue.snapshot()[0])
    assert sent[0] == 0xD0
    assert decode_packet(sent, LAYOUT, CodecState()).status is DecodeStatus.UNDECODABLE

    fixed, _ = acquisition(tmp_path / "spec", SPEC, LAYOUT, script)
    await run_batch(fixed, UNDECODABLE)
    packet = fixed.queue.snapshot()[0]
    decoded = decode_packet(packet_bytes(packet), LAYOUT, CodecState())
    assert decoded.status is DecodeStatus.EXACT
    assert decoded.samples(len(LAYOUT)) == UNDECODABLE
    assert len(packet_bytes(packet)) > len(sent)  # exactness costs bytes, it is not free


async def test_lossless_always_true(tmp_path) -> None:
    lossy = next(c for c in CASES if c["name"] == "semantic_stable_default_layout")
    samples = lossy["input_samples"]
    # Values that only the lossy 0x50 run encoding makes short: constant within its tolerances.
    constant = [[2400, 100, 30, 2500, 25, 520]] * 7
    for profile, flag in ((REFERENCE, True), (SPEC, True)):
        acq, _ = acquisition(
            tmp_path / profile, profile, lossy["register_layout"], [tuple(s) for s in samples]
        )
        await run_batch(acq, samples)
        assert acq.queue.snapshot()[0].metrics.lossless_verified is flag
    reference, _ = acquisition(tmp_path / "c", REFERENCE, LAYOUT, [tuple(s) for s in constant])
    await run_batch(reference, constant)
    assert reference.queue.snapshot()[0].metrics.lossless_verified is True
    # spec reports the truth: every packet it sends decodes exactly, and says so
    fixed, _ = acquisition(tmp_path / "d", SPEC, LAYOUT, [tuple(s) for s in UNDECODABLE])
    await run_batch(fixed, UNDECODABLE)
    assert fixed.queue.snapshot()[0].metrics.lossless_verified is True


async def test_lossy_winner_is_flagged_lossy_when_spec_sends_it(tmp_path) -> None:
    # With the lossy choice allowed but honest metadata, a lossy 0x50 winner says lossless=false.
    quirks = PROFILES[REFERENCE].quirks.__class__(lossless_always_true=False)
    profile = PROFILES[REFERENCE].__class__("mixed", quirks)
    case = next(c for c in CASES if c["name"] == "semantic_tolerance_merges_runs_lossy")
    samples = case["input_samples"]
    acq, _ = acquisition(tmp_path, profile, case["register_layout"], [tuple(s) for s in samples])
    await run_batch(acq, samples)
    packet = acq.queue.snapshot()[0]
    exact = decode_packet(packet_bytes(packet), case["register_layout"], CodecState())
    assert packet.metrics.lossless_verified is (exact.status is DecodeStatus.EXACT)


async def test_original_size_2n(tmp_path) -> None:
    case = CASES[0]
    n = len(case["register_layout"])
    for profile, size in ((REFERENCE, 2 * n), (SPEC, 14 * n)):
        acq, _ = acquisition(
            tmp_path / profile, profile, case["register_layout"], [tuple(s) for s in case["input_samples"]]
        )
        await run_batch(acq, case["input_samples"])
        assert acq.queue.snapshot()[0].metadata.original_size_bytes == size


async def test_base64_unpadded(tmp_path) -> None:
    case = next(c for c in CASES if c["name"] == "headerless_raw_16bit")  # 14 bytes: 14 % 3 = 2
    samples = [tuple(s) for s in case["input_samples"]]
    texts = {}
    for profile in (REFERENCE, SPEC):
        acq, _ = acquisition(tmp_path / profile, profile, case["register_layout"], samples)
        await run_batch(acq, samples)
        texts[profile] = acq.queue.snapshot()[0].compressed_binary
    packet = bytes.fromhex(case["encoded_hex"])
    assert texts[REFERENCE] == base64.b64encode(packet).decode().replace("=", "A")
    assert texts[SPEC] == base64.b64encode(packet).decode() and texts[SPEC].endswith("=")


async def test_method_label_from_first_byte(tmp_path) -> None:
    # Vac1 values of 12 bits starting 0xD0..: the headerless bit-pack wins and begins with the 0xD0 marker.
    samples = [(3328 + 37 * i,) for i in range(7)]
    labels = {}
    for profile in (REFERENCE, SPEC):
        acq, _ = acquisition(tmp_path / profile, profile, [0], samples)
        await run_batch(acq, samples)
        packet = acq.queue.snapshot()[0]
        assert packet_bytes(packet)[0] == 0xD0 and len(packet_bytes(packet)) == 11
        labels[profile] = packet.metadata.method
    assert labels == {REFERENCE: "BATCH_DICTIONARY", SPEC: "BATCH_BITPACK"}
