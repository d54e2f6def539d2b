"""Virtual time: long sleeps take no real time, timers fire at their device times, and work in flight
(loopback HTTP, executor jobs, aiosqlite, threads that hold time) is never jumped over."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import aiosqlite
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from harness.clocks import DEFAULT_EPOCH, Clock, DeviceTimeoutError, RealClock, parse_time
from harness.virtual_time import VirtualClock, VirtualTimeLoop, run_virtual

HOUR = 3600.0
DAY = 24 * HOUR


def _sleeper(seconds: float) -> asyncio.Task[None]:
    """Another task with a long timer: what tempts the loop to jump."""
    return asyncio.create_task(asyncio.sleep(seconds))


def _slow_thread_work(seconds: float = 0.2) -> str:
    time.sleep(seconds)  # real time, in a worker thread: what the loop must wait for
    return "done"


# --- sleeps and timers --------------------------------------------------------------------------


def test_sleeps_of_hours_end_in_order_at_their_device_times_without_real_waiting() -> None:
    woke: list[tuple[str, float]] = []

    async def main() -> VirtualTimeLoop:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)

        async def sleep(name: str, seconds: float) -> None:
            await asyncio.sleep(seconds)
            woke.append((name, loop.time()))

        await asyncio.gather(*(sleep(name, s) for name, s in
                               [("month", 30 * DAY), ("hour", HOUR), ("6h", 6 * HOUR), ("day", DAY)]))
        return loop

    loop = run_virtual(main())  # pytest-timeout fails the test if it waited for real

    assert woke == [("hour", HOUR), ("6h", 6 * HOUR), ("day", DAY), ("month", 30 * DAY)]
    assert loop.skipped == 30 * DAY  # time moved by jumps (of at most a day each), not by waiting


def test_call_later_call_at_and_timeouts_fire_at_their_device_times() -> None:
    async def main() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        fired: dict[str, float] = {}
        loop.call_later(7.5, lambda: fired.setdefault("call_later", loop.time()))
        loop.call_at(100.0, lambda: fired.setdefault("call_at", loop.time()))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10.0), timeout=3.0)
        fired["wait_for"] = loop.time()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.Event().wait()
        fired["timeout"] = loop.time()
        await asyncio.sleep(200.0)
        return fired

    assert run_virtual(main()) == {"wait_for": 3.0, "timeout": 5.0, "call_later": 7.5, "call_at": 100.0}


# --- loopback HTTP --------------------------------------------------------------------------------


async def _http_server(delay: float) -> tuple[web.AppRunner, str]:
    async def fast(request: web.Request) -> web.Response:
        return web.json_response({"at": asyncio.get_running_loop().time()})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.json_response({"at": asyncio.get_running_loop().time()})

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=hashlib.sha256(body).digest())

    app = web.Application(client_max_size=8 << 20)
    app.add_routes([web.get("/fast", fast), web.get("/slow", slow), web.post("/echo", echo)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


def test_loopback_http_requests_complete_while_time_jumps_over_long_sleeps() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        runner, url = await _http_server(delay=2.0)
        ticks: list[float] = []

        async def hourly() -> None:  # long timers elsewhere: the loop jumps whenever it can
            while True:
                await asyncio.sleep(HOUR)
                ticks.append(loop.time())

        ticker = asyncio.create_task(hourly())
        body = random.Random(1).randbytes(4 << 20)  # larger than the socket buffers: written in parts
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
                for cycle in range(12):  # a 15-minute upload cycle for 3 device hours
                    start = loop.time()
                    async with http.get(f"{url}/fast") as reply:
                        assert (await reply.json())["at"] == start  # served without time passing
                    async with http.get(f"{url}/slow") as reply:
                        assert (await reply.json())["at"] == start + 2.0
                    assert loop.time() == start + 2.0
                    async with http.post(f"{url}/echo", data=body) as reply:
                        assert await reply.read() == hashlib.sha256(body).digest()
                    replies = await asyncio.gather(*(http.get(f"{url}/slow") for _ in range(8)))
                    assert [r.status for r in replies] == [200] * 8 and loop.time() == start + 4.0
                    for r in replies:
                        r.release()
                    await asyncio.sleep(900.0 * (cycle + 1) - loop.time())
        finally:
            ticker.cancel()
            await runner.cleanup()
        assert loop.time() == 3 * HOUR
        assert ticks[:2] == [HOUR, 2 * HOUR]  # a third may share 3 h with the last wake-up
        assert loop.jumps >= 12 * 3  # the upload pauses and the slow replies were jumped over

    run_virtual(main())


# --- work in threads ------------------------------------------------------------------------------


def test_executor_jobs_finish_before_time_moves() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        sleeper = _sleeper(HOUR)
        with ThreadPoolExecutor(max_workers=1) as own_pool:  # like the cloud's SQLite writer thread
            job = loop.run_in_executor(own_pool, _slow_thread_work)
            assert loop.io_pending() == 1 and "_slow_thread_work" in loop.pending_work()[0]
            assert await asyncio.wait_for(job, timeout=1.0) == "done"
        assert await asyncio.wait_for(asyncio.to_thread(_slow_thread_work), timeout=1.0) == "done"
        infos = await asyncio.wait_for(loop.getaddrinfo("127.0.0.1", 8080), timeout=1.0)
        assert infos and loop.time() == 0.0
        await sleeper
        assert loop.time() == HOUR and loop.io_pending() == 0

    run_virtual(main())


def test_an_aiosqlite_query_completes_before_time_jumps(tmp_path: Path) -> None:
    count = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 300000) SELECT count(*) FROM n"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sleeper = _sleeper(HOUR)
        async with aiosqlite.connect(tmp_path / "work.db") as db:
            await db.execute("CREATE TABLE samples (t REAL, value INTEGER)")
            for _ in range(2):
                await db.executemany("INSERT INTO samples VALUES (?, ?)",
                                     [(loop.time(), k) for k in range(20_000)])
                await db.commit()
                rows = await asyncio.wait_for(db.execute_fetchall(count), timeout=5.0)  # a good fraction of a second, real
                assert rows == [(300_000,)] and loop.time() == 0.0 and not sleeper.done()
            assert await db.execute_fetchall("SELECT count(*), max(t) FROM samples") == [(40_000, 0.0)]
        await sleeper
        assert loop.time() == HOUR

    run_virtual(main())


class _ThreadWorker:
    """A library with a worker thread of its own that completes loop futures (aiosqlite's pattern)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[asyncio.Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        self.answered = threading.Event()  # set once a result has been posted to the loop
        self._thread = threading.Thread(target=self._serve)
        self._thread.start()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, work = job
            result = work()
            future.get_loop().call_soon_threadsafe(lambda f, r: f.done() or f.set_result(r), future, result)
            self.answered.set()

    async def run(self, work: Callable[[], Any]) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._jobs.put((future, work))
        return await future

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()


def test_a_thread_completing_futures_is_learnt_after_its_first_result() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        worker = _ThreadWorker()
        try:
            sleeper = _sleeper(HOUR)
            # Unknown package: its first job is not seen, so time jumps over it (hence the declared list).
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(worker.run(_slow_thread_work), timeout=1.0)
            assert loop.time() == 1.0
            await asyncio.to_thread(worker.answered.wait)  # its result, posted late, teaches the loop
            for _ in range(3):
                start = loop.time()
                assert await asyncio.wait_for(worker.run(_slow_thread_work), timeout=1.0) == "done"
                assert loop.time() == start and not sleeper.done()
        finally:
            worker.close()
        await sleeper

    run_virtual(main(), clock=VirtualClock(thread_bound_packages=()))


def _signal_from_thread(loop: asyncio.AbstractEventLoop, event: asyncio.Event, delay: float) -> threading.Thread:
    def work() -> None:
        time.sleep(delay)
        loop.call_soon_threadsafe(event.set)

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def test_a_component_holds_time_by_duck_typing_while_a_thread_works() -> None:
    threads: list[threading.Thread] = []

    async def wait_for_thread(held: bool) -> float:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        hold = getattr(loop, "hold_time", None) if held else None  # a component's way, no harness import
        start = loop.time()
        with hold("firmware image write") if hold else contextlib.nullcontext():
            if hold:
                assert loop.io_pending() == 1 and loop.pending_work() == ["firmware image write"]
            threads.append(_signal_from_thread(loop, done, 0.2))
            await asyncio.wait_for(done.wait(), timeout=1.0)
        return loop.time() - start

    async def main() -> None:
        sleeper = _sleeper(HOUR)
        assert await wait_for_thread(held=True) == 0.0
        with pytest.raises(TimeoutError):  # the same wait, unheld: time jumps to the timeout
            await wait_for_thread(held=False)
        await asyncio.to_thread(threads[-1].join)
        sleeper.cancel()

    run_virtual(main())


def test_a_hold_released_from_another_thread_lets_time_move_again(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        hold = loop.hold_time("flash erase")
        released = threading.Event()

        def release_later() -> None:
            time.sleep(0.3)
            released.set()
            hold.release()

        threading.Thread(target=release_later).start()
        await asyncio.sleep(10.0)
        assert released.is_set()  # time stood still until the thread let go
        return loop.time()

    with caplog.at_level(logging.WARNING, logger="harness.virtual_time"):
        assert run_virtual(main(), clock=VirtualClock(stall_warning=0.05)) == 10.0
    assert any("flash erase" in record.getMessage() for record in caplog.records)


# --- determinism ------------------------------------------------------------------------------------


async def _toy_system(seed: int, hours: float) -> list[tuple[float, str]]:
    """Producer every 2 s with seeded jitter, a consumer batching up to 8 or 15 s, a hash in a thread."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    samples: asyncio.Queue[int] = asyncio.Queue()
    trace: list[tuple[float, str]] = []

    async def producer() -> None:
        for n in range(int(hours * 1800)):
            await asyncio.sleep(2.0 + rng.uniform(-0.3, 0.3))
            await samples.put(n)
            trace.append((loop.time(), f"sample {n}"))

    async def consumer() -> None:
        while True:
            batch = [await samples.get()]
            deadline = loop.time() + 15.0
            while len(batch) < 8 and (left := deadline - loop.time()) > 0:
                try:
                    batch.append(await asyncio.wait_for(samples.get(), left))
                except TimeoutError:
                    break
            digest = await asyncio.to_thread(lambda b=batch: hashlib.sha256(repr(b).encode()).hexdigest()[:8])
            trace.append((loop.time(), f"batch {batch[0]} {batch[-1]} {digest}"))

    consuming = asyncio.create_task(consumer())
    await producer()
    await asyncio.sleep(30.0)
    consuming.cancel()
    return trace


def test_a_seeded_toy_system_gives_the_same_trace_on_every_run() -> None:
    first = run_virtual(_toy_system(seed=7, hours=1.0))
    second = run_virtual(_toy_system(seed=7, hours=1.0))
    other_seed = run_virtual(_toy_system(seed=8, hours=1.0))
    assert first == second
    assert first != other_seed
    batches = [what.split()[1:3] for _, what in first if what.startswith("batch")]
    covered = [n for low, high in batches for n in range(int(low), int(high) + 1)]
    assert covered == list(range(1800))  # every sample in exactly one batch, in order
    assert all(int(high) - int(low) < 8 for low, high in batches)


# --- the clock API --------------------------------------------------------------------------------


def test_advance_until_now_and_wall_on_the_virtual_clock() -> None:
    clock = VirtualClock()
    uploads: list[tuple[float, float]] = []  # (device time, timestamp a component would record)

    async def uploader(wall_clock: Callable[[], float]) -> None:
        while True:
            await asyncio.sleep(900.0)
            uploads.append((clock.now(), wall_clock()))

    async def main() -> None:
        task = asyncio.create_task(uploader(clock.wall))
        await clock.advance(hours=6)
        assert clock.now() == 6 * HOUR and len(uploads) == 24  # the one due at exactly 6 h included
        await clock.advance(seconds=0)
        assert clock.now() == 6 * HOUR and len(uploads) == 24

        met_at = await clock.until(lambda: len(uploads) >= 27 and clock.now(), timeout=HOUR)
        assert met_at == clock.now() == 6 * HOUR + 3 * 900.0  # noticed when it happened, no polling

        async def three_more() -> bool:
            return len(uploads) >= 30

        assert await clock.until(three_more, timeout=HOUR, poll=60.0)
        assert 6 * HOUR + 6 * 900.0 <= clock.now() < 6 * HOUR + 6 * 900.0 + 60.0

        start = clock.now()
        with pytest.raises(DeviceTimeoutError, match="30 s of device time"):
            await clock.until(lambda: False, timeout=30.0)
        assert clock.now() == start + 30.0
        with pytest.raises(ZeroDivisionError):
            await clock.until(lambda: len(uploads) > 40 and 1 / 0, timeout=DAY)
        task.cancel()

    clock.run(main())
    assert all(wall == DEFAULT_EPOCH + at for at, wall in uploads)
    assert clock.wall() == clock.wall_at(clock.now()) and clock.device_time_at(clock.wall()) == clock.now()


def test_a_virtual_clock_refuses_an_ordinary_loop() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(TypeError, match="VirtualTimeLoop"):
            VirtualClock().bind(loop)
    finally:
        loop.close()


def test_a_scaled_real_clock_runs_device_time_faster_than_real_time() -> None:
    clock = RealClock(6000.0, epoch=1_000_000.0)

    async def main() -> None:
        await clock.advance(minutes=1)  # 10 ms of real time
        assert clock.now() >= 60.0 - 1e-3
        flag = {"set": False}
        asyncio.get_running_loop().call_later(60.0 / 6000.0, lambda: flag.update(set=True))
        assert await clock.until(lambda: flag["set"], timeout=HOUR, poll=5.0)
        with pytest.raises(DeviceTimeoutError):
            await clock.until(lambda: False, timeout=30.0)

    clock.run(main())
    assert clock.mode == "scale:6000" and clock.time_scale == 6000.0
    assert clock.wall() == pytest.approx(1_000_000.0 + clock.now())


@pytest.mark.parametrize(
    ("spec", "kind", "mode", "scale"),
    [("virtual", VirtualClock, "virtual", 1.0), ("real", RealClock, "real", 1.0),
     ("scale:60", RealClock, "scale:60", 60.0), (" Scale:0.5 ", RealClock, "scale:0.5", 0.5)],
)
def test_parse_time_gives_the_clock_for_each_mode(spec: str, kind: type[Clock], mode: str, scale: float) -> None:
    clock = parse_time(spec)
    assert type(clock) is kind and clock.mode == mode and clock.time_scale == scale


@pytest.mark.parametrize("spec", ["", "fast", "scale", "scale:", "scale:x", "scale:0", "scale:-2", "scale:nan",
                                  "scale:inf", "virtual:2"])
def test_parse_time_rejects_other_values(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_time(spec)


@given(st.text(max_size=20))
def test_parse_time_gives_a_clock_or_a_value_error_for_any_text(spec: str) -> None:
    try:
        clock = parse_time(spec)
    except ValueError:
        return
    assert clock.time_scale > 0


def test_a_settle_delay_keeps_behaviour_the_same() -> None:
    clock = VirtualClock(settle=0.001)
    assert clock.run(_toy_system(seed=7, hours=0.05)) == run_virtual(_toy_system(seed=7, hours=0.05))
