"""The upload cycle (`DataUploader`, firmware-protocol.md §2.4, §4).

On the upload tick the queue is drained into one inner document, the nonce is incremented and saved in
NVS *before* anything is sent (so no nonce is ever used twice, whatever happens next), the document is
signed into the envelope and POSTed to `/process`. Only HTTP 200 is success; anything else puts the
drained packets back at the front of the queue for the next tick, which uses a fresh nonce.

Quirks honoured here: `document_truncated_2048` (1.0.4 signs and sends the first 2047 bytes of a longer
document; the fix keeps the 2048-byte buffer and sends the queue as as many documents as it takes, one
after another on the same tick, until it is empty or one fails) and `only_200_is_success` (the fix
accepts any 2xx).

Tagged points: `upload.nonce_saved` (nonce durable, nothing sent) and `upload.sent` (the cloud has
answered, the device has not looked at the answer yet).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from device_emulator.context import FirmwareContext
from device_emulator.event_log import EventKind
from device_emulator.nvs import advance_nonce
from device_emulator.packet_queue import PacketQueue
from protocol.envelope import build_envelope
from protocol.upload_document import FIRMWARE_DOCUMENT_BUFFER, CompressedPacket, firmware_document

POINT_NONCE_SAVED = "upload.nonce_saved"
POINT_SENT = "upload.sent"
# serializeJson into a char[2048] keeps 2047 characters and the terminating NUL.
DOCUMENT_LIMIT = FIRMWARE_DOCUMENT_BUFFER - 1
# The headers the ESP32 HTTPClient sends besides Content-Type (§4.1); aiohttp adds Host and Content-Length.
ESP32_HEADERS = {
    "Content-Type": "application/json",
    "User-Agent": "ESP32HTTPClient",
    "Connection": "keep-alive",
    "Accept-Encoding": "identity;q=1,chunked;q=0.1,*;q=0",
}


@dataclass(frozen=True)
class UploadResult:
    nonce: int
    packets: int  # packets the document carried
    status: int | None  # HTTP status; None: no answer
    ok: bool
    document: bytes  # the signed inner document (truncated when the firmware truncates it)


class Uploader:
    def __init__(
        self,
        ctx: FirmwareContext,
        queue: PacketQueue,
        key: bytes,
        *,
        on_result: Callable[[UploadResult], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.queue = queue
        self.key = key
        self.quirks = ctx.profile.quirks
        self.on_result = on_result
        self.last: UploadResult | None = None
        self.attempts = 0

    async def tick(self) -> list[UploadResult]:
        """The upload tick: 1.0.4 sends one document; the fix sends documents until the queue is empty
        or one fails (a backlog left by an outage leaves at once instead of 3-4 packets a tick while the
        queue overflows). Nothing is queued meanwhile: the firmware polls on the same loop."""
        results: list[UploadResult] = []
        for _ in range(len(self.queue)):  # each document carries at least one packet
            result = await self.upload()
            if result is None:
                break
            results.append(result)
            if self.quirks.document_truncated_2048 or not result.ok:
                break
        return results

    async def upload(self) -> UploadResult | None:
        """One document; None when the queue is empty (nothing sent, no nonce used)."""
        if not len(self.queue):
            return None
        packets = self.queue.drain(None if self.quirks.document_truncated_2048 else self._fitting())
        document = firmware_document(self.ctx.device_id, self.ctx.millis(), packets).to_json()
        if self.quirks.document_truncated_2048:
            document = document[:DOCUMENT_LIMIT]
        nonce = advance_nonce(self.ctx.nvs)  # durable before the envelope exists (§4.5)
        self.ctx.point(POINT_NONCE_SAVED)
        body = build_envelope(self.key, nonce, document)
        self.attempts += 1
        if self.quirks.drop_every_third_upload and self.attempts % 3 == 0:
            status: int | None = 200  # the harness's self-test: "sent", but the cloud never sees it
        else:
            status = await self._post(body)
        ok = status is not None and (
            status == 200 if self.quirks.only_200_is_success else 200 <= status < 300
        )
        result = UploadResult(nonce, len(packets), status, ok, document)
        self._settle(result, packets)
        return result

    def _fitting(self) -> int:
        """How many queued packets fit one untruncated document (at least one)."""
        queued = self.queue.snapshot()
        count = 1
        while count < len(queued) and self._size(queued[: count + 1]) <= DOCUMENT_LIMIT:
            count += 1
        return count

    def _size(self, packets: list[CompressedPacket]) -> int:
        return len(firmware_document(self.ctx.device_id, self.ctx.millis(), packets).to_json())

    async def _post(self, body: bytes) -> int | None:
        timeout = aiohttp.ClientTimeout(total=self.ctx.loop_seconds(self.ctx.profile.timings.cloud_timeout_s))
        try:
            async with self.ctx.http.post(
                self.ctx.url("/process"), data=body, headers=ESP32_HEADERS, timeout=timeout
            ) as response:
                self.ctx.point(POINT_SENT)
                await response.read()
                return response.status
        except (TimeoutError, aiohttp.ClientError) as error:
            self.ctx.console.log("uploader", f"POST /process failed: {error!r}", "E")
            return None

    def _settle(self, result: UploadResult, packets: list[CompressedPacket]) -> None:
        self.last = result
        if result.ok:
            self.ctx.events.record(EventKind.UPLOAD_OK, nonce=result.nonce, packets=result.packets)
            self.ctx.console.log("uploader", f"upload ok: {result.packets} packets, nonce {result.nonce}")
        else:
            self.queue.put_back(packets)
            self.ctx.events.record(
                EventKind.UPLOAD_FAILED, nonce=result.nonce, packets=result.packets, status=result.status
            )
            self.ctx.console.log(
                "uploader", f"upload failed (HTTP {result.status}), {result.packets} packets re-queued", "E"
            )
        if self.on_result is not None:
            self.on_result(result)
