"""A separate OS process using the storage, for the crash and multi-process tests.

    storage_child.py stream URL DEVICES   ingest forever, one sequential stream per device; print
                                          "DEVICE NONCE" after each ingest returned (committed)
    storage_child.py race URL DEVICE NONCE TAG COUNT
                                          print "ready", wait for a line on stdin, then ingest COUNT
                                          different envelopes with one nonce at once; print the
                                          verdicts as JSON
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter

from cloud.storage import Storage, open_storage
from tests.cloud.storage_uploads import FakePacket, upload


async def stream(storage: Storage, device: str) -> None:
    nonce = 0
    while True:
        nonce += 1
        result = await storage.ingest(upload(device, nonce, [FakePacket(0, nonce, nonce.to_bytes(4, "big"))]))
        assert result.verdict == "accepted", result
        sys.stdout.write(f"{device} {nonce}\n")
        sys.stdout.flush()


async def race(storage: Storage, device: str, nonce: int, tag: str, count: int) -> None:
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    requests = [upload(device, nonce, [FakePacket(0, i, f"{tag}{i}".encode())], body=f"{tag}{i}".encode())
                for i in range(count)]
    results = await asyncio.gather(*(storage.ingest(r) for r in requests))
    print(json.dumps(Counter(str(r.verdict) for r in results)), flush=True)


async def main(argv: list[str]) -> None:
    mode, url, *rest = argv
    # a pool as large as the race, so every copy really is in flight at once on PostgreSQL
    options = {"max_size": 25} if url.startswith("postgresql") else {}
    async with open_storage(url, **options) as storage:
        if mode == "stream":
            await asyncio.gather(*(stream(storage, device) for device in rest[0].split(",")))
        else:
            device, nonce, tag, count = rest
            await race(storage, device, int(nonce), tag, int(count))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
