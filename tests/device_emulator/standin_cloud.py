"""A STAND-IN for the EcoWatt cloud, for the device emulator's tests until the real cloud exists.

It checks what the device sends with `protocol/` only (envelope MAC and nonce order, the inner document
and every packet decoded with a mirrored codec state) and records it. It is not the cloud: no storage,
no operator API. Device-facing routes: /process, /changes, /command/poll, /command/result,
/ota/check/<id>, /diagnostics/<id>, /config/ack/<id>.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from protocol.compression.firmware_base64 import decode_compressed_binary
from protocol.compression.packet import decode_packet
from protocol.compression.state import CodecState
from protocol.envelope import REFERENCE_PSK, OpenedEnvelope, check_nonce, open_envelope
from protocol.errors import EcoWattError
from protocol.upload_document import UploadDocument, parse_upload_document


@dataclass
class Upload:
    body: bytes
    nonce: int | None
    status: int
    document: UploadDocument | None = None
    error: str = ""
    samples: list[list[int]] = field(default_factory=list)  # decoded, in order


class StandInCloud:
    def __init__(self, key: bytes = REFERENCE_PSK, *, process_status: int | None = None) -> None:
        self.keys = [key]  # every key a board may sign with (a fleet has one per board)
        self.process_status = process_status  # force this answer to /process (None: verify)
        self.uploads: list[Upload] = []
        self.nonces_seen: list[int] = []  # every nonce that reached /process, accepted or not
        self.last_nonce: int | None = None
        self.codec = CodecState()
        self.last_timestamp: int | None = None
        self.requests: list[tuple[str, str, bytes]] = []  # (method, path, body)
        self.config_replies: list[dict[str, Any]] = []  # served once each by /changes
        self.diagnostics: list[dict[str, Any]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    @property
    def accepted(self) -> list[Upload]:
        return [u for u in self.uploads if u.status == 200]

    def samples(self) -> list[list[int]]:
        return [s for u in self.accepted for s in u.samples]

    async def start(self) -> str:
        app = web.Application(middlewares=[self._record])
        app.router.add_post("/process", self._process)
        app.router.add_post("/changes", self._changes)
        app.router.add_post("/command/poll", _answer({"message": "No pending commands"}))
        app.router.add_post("/command/result", _answer({"status": "success"}))
        app.router.add_get("/ota/check/{id}", self._ota_check)
        app.router.add_post("/diagnostics/{id}", self._diagnostics)
        app.router.add_post("/config/ack/{id}", _answer({"success": True}))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path, await request.read()))
        response: web.StreamResponse = await handler(request)
        return response

    async def _process(self, request: web.Request) -> web.Response:
        body = await request.read()
        upload = Upload(body, None, 0)
        self.uploads.append(upload)
        try:
            opened = self._open(body)
            upload.nonce = opened.nonce
            self.nonces_seen.append(opened.nonce)
            check_nonce(opened.nonce, self.last_nonce)
        except EcoWattError as error:
            upload.status, upload.error = 401, str(error)
            return web.json_response({"error": upload.error}, status=401)
        if self.process_status is not None:
            upload.status = self.process_status
            return web.json_response({"status": "forced"}, status=self.process_status)
        self.last_nonce = opened.nonce
        try:
            document = parse_upload_document(opened.document)
        except EcoWattError as error:  # authentic but unparsable (the 2048-byte truncation)
            upload.status, upload.error = 200, f"undecodable: {error}"
            return web.json_response({"status": "success", "data_loss": upload.error})
        upload.document = document
        if self.last_timestamp is not None and document.timestamp < self.last_timestamp:
            self.codec = CodecState()  # the device rebooted: its codec state restarted
        self.last_timestamp = document.timestamp
        for packet in document.packets:
            meta = packet.metadata
            data = decode_compressed_binary(packet.compressed_binary, meta.compressed_size_bytes)
            decoded = decode_packet(data, meta.register_layout, self.codec)
            self.codec.advance(decoded, meta.register_layout, 7)
            upload.samples.extend(decoded.samples(meta.register_count))
        upload.status = 200
        return web.json_response({"status": "success", "processed_entries": len(document.packets)})

    def _open(self, body: bytes) -> OpenedEnvelope:
        error: EcoWattError | None = None
        for key in self.keys:
            try:
                return open_envelope(body, key)
            except EcoWattError as failed:
                error = failed
        assert error is not None
        raise error

    async def _changes(self, request: web.Request) -> web.Response:
        reply = self.config_replies.pop(0) if self.config_replies else {"Changed": False}
        return web.json_response(reply)

    async def _ota_check(self, request: web.Request) -> web.Response:
        version = request.query.get("version", "")
        return web.json_response(
            {
                "success": True,
                "device_id": request.match_info["id"],
                "update_available": False,
                "update_info": {"available": False, "current_version": version},
            }
        )

    async def _diagnostics(self, request: web.Request) -> web.Response:
        self.diagnostics.append(await request.json())
        return web.json_response({"success": True}, status=201)


def _answer(document: dict[str, Any]) -> Any:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(document)

    return handler
