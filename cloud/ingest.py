"""Secured uploads: authenticate the envelope, decode, store exactly once, then answer and tell.

The order of checks (firmware-protocol.md §4.6, fixed per §11.3):
 1. the envelope must parse (else 400, nothing recorded: the sender is unknown);
 2. the key is chosen by the device id the signed document names (the firmware puts it first, so it
    is found even in a truncated document), else by the URL's id, else the firmware's fleet device;
 3. the MAC is checked in constant time (401 on failure, logged for a known device) -- before any
    state is consulted, so an unauthenticated caller learns nothing about nonces;
 4. then, in ONE storage transaction keyed by that authenticated device id: the nonce must be greater
    than the last accepted one and is advanced, the packets are decoded with the mirrored decoder state
    and stored (a re-sent packet once), the decoder state, the reply and the MQTT outbox rows are saved.
The device hears 200 only after that commit. An authentic upload is answered 200 even when its
document or packets cannot be decoded (the firmware would otherwise resend them forever). Any nonce
that is not greater than the last accepted one is refused as a replay (401) and stores nothing; a
byte-identical copy of the last accepted envelope is one of them (the firmware never sends one: it
takes a fresh nonce for every attempt, §4.5), logged with the verdict "resend" so a duplicated request
can be told from a forged replay.

Every answer carries the verdict in the `X-EcoWatt-Verdict` header of successful replies, and in the
error `code` otherwise.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from cloud.events import EventBus
from cloud.key_registry import FIRMWARE_DEVICE_ID, KeyRegistry
from cloud.storage import (
    DecodedUpload,
    IngestRequest,
    IngestResult,
    OutboxMessage,
    PacketIn,
    PacketStatus,
    Storage,
    Verdict,
)
from cloud.telemetry_messages import (
    RenderedPacket,
    new_packets,
    outbox_messages,
    render_packet,
    telemetry_payload,
)
from cloud.upload_decoder import DeviceMirror, decode_with_mirror, read_seed_upload, signed_device_id
from protocol.envelope import OpenedEnvelope, parse_envelope, verify_envelope
from protocol.errors import AuthenticationError, DocumentError, EcoWattError, EnvelopeError, ReplayError
from protocol.json_wire import load_object
from protocol.upload_document import UploadDocument, parse_upload_document

VERDICT_HEADER = "X-EcoWatt-Verdict"
MIRROR_CACHE = 10_000  # devices whose decoder mirror is kept in memory
AUTH_FAILED = "envelope failed authentication"
REPLAYED = "nonce is not greater than the last accepted one"


@dataclass(frozen=True)
class IngestReply:
    """What the route answers: status, JSON body and the verdict."""

    status: int
    body: str
    verdict: str
    device_id: str
    upload_id: int | None = None


@dataclass(frozen=True)
class _Authentic:
    device_id: str
    opened: OpenedEnvelope
    envelope_sha256: str
    body_bytes: int

    @property
    def nonce(self) -> int:
        return self.opened.nonce


@dataclass
class _Decoding:
    """What the decode callback produced in the (last) transaction attempt, for outbox and events."""

    decoded: DecodedUpload | None = None
    rendered: list[RenderedPacket] | None = None  # parallel to decoded.packets
    mirror: DeviceMirror | None = None  # the device's mirror after these packets


@dataclass
class _Prediction:
    """An upload decoded before its transaction from the mirror this process last committed; used
    only if the stored state is still that one (else the transaction decodes from what is stored)."""

    assumed_state: str
    decoded: DecodedUpload
    rendered: list[RenderedPacket]
    mirror: DeviceMirror


class MirrorCache:
    """The mirror of each device as this process last committed it (bounded, least recently used out).

    A mirror is taken out while an upload is being decoded with it, so two uploads of one device in
    flight never share one; the loser decodes inside its transaction from the stored state.
    """

    def __init__(self, size: int = MIRROR_CACHE) -> None:
        self._size = size
        self._mirrors: OrderedDict[str, tuple[str, DeviceMirror]] = OrderedDict()

    def take(self, device_id: str) -> tuple[str, DeviceMirror] | None:
        return self._mirrors.pop(device_id, None)

    def put(self, device_id: str, state: str, mirror: DeviceMirror) -> None:
        self._mirrors[device_id] = (state, mirror)
        self._mirrors.move_to_end(device_id)
        while len(self._mirrors) > self._size:
            self._mirrors.popitem(last=False)


class Ingestor:
    """The secured-upload service behind `/process`, `/aggregated/<id>` and `/security/validate/<id>`."""

    def __init__(self, storage: Storage, keys: KeyRegistry, events: EventBus,
                 wall_clock: Callable[[], float], *, outbox: bool = False) -> None:
        self.storage = storage
        self.keys = keys
        self.events = events
        self.wall_clock = wall_clock
        # MQTT messages go into the outbox only when this process publishes them (`--mqtt`): without a
        # publisher they would pile up unread, and rendering them is most of an ingest's CPU time.
        self.outbox = outbox
        # Refusals that name no known device are not stored (anyone could fill the table); counted here.
        self.unattributed_rejections = 0
        self.mirrors = MirrorCache()

    # --- authentication ---

    async def _authenticate(self, body: bytes, url_device_id: str | None) -> _Authentic:
        try:
            envelope = parse_envelope(body)
        except EnvelopeError:
            self.unattributed_rejections += 1
            raise
        claimed = None if envelope.encrypted else signed_device_id(envelope.payload)
        device_id = claimed or url_device_id or FIRMWARE_DEVICE_ID
        key = await self.keys.key_for(device_id)
        if key is None:
            self.unattributed_rejections += 1
            raise AuthenticationError(AUTH_FAILED, envelope.nonce)
        envelope_sha256 = hashlib.sha256(body).hexdigest()
        try:
            opened = verify_envelope(envelope, key)
        except AuthenticationError:
            await self.storage.record_rejected_upload(device_id, "bad_mac", nonce=envelope.nonce, reason=AUTH_FAILED,
                                                      body_bytes=len(body), envelope_sha256=envelope_sha256)
            self.events.publish("upload", device_id, {"nonce": envelope.nonce, "verdict": "bad_mac"})
            raise
        authentic = _Authentic(device_id, opened, envelope_sha256, len(body))
        if envelope.encrypted:  # the device id was not readable before decryption: check it now
            named = signed_device_id(opened.document)
            if named is not None and named != device_id:
                await self._refuse_other_device(authentic, named)
        return authentic

    async def _refuse_other_device(self, authentic: _Authentic, other: str) -> NoReturn:
        """The signed document names another device than the one asked for: a replay if its nonce is
        spent for the device it names, else a mismatch. Nothing is consumed either way."""
        named = signed_device_id(authentic.opened.document) or authentic.device_id
        state = await self.storage.nonce_state(named)
        replay = state is not None and state.last_nonce is not None and authentic.nonce <= state.last_nonce
        verdict = "replay" if replay else "device_mismatch"
        await self.storage.record_rejected_upload(
            authentic.device_id, verdict, nonce=authentic.nonce, body_bytes=authentic.body_bytes,
            envelope_sha256=authentic.envelope_sha256,
            reason=REPLAYED if replay else f"signed document is for another device than {other!r}")
        self.events.publish("upload", authentic.device_id, {"nonce": authentic.nonce, "verdict": verdict})
        if replay:
            raise ReplayError(REPLAYED, authentic.nonce)
        raise AuthenticationError("the signed document is for another device", other)

    async def _reject_document(self, authentic: _Authentic, error: EcoWattError) -> NoReturn:
        await self.storage.record_rejected_upload(
            authentic.device_id, "bad_document", nonce=authentic.nonce, reason=str(error)[:500],
            body_bytes=authentic.body_bytes, envelope_sha256=authentic.envelope_sha256)
        raise error

    # --- storing ---

    async def _store(self, authentic: _Authentic, decode: Callable[[str | None], None],
                     reply: Callable[[IngestResult, _Decoding], dict[str, Any]], decoding: _Decoding,
                     received_at: float) -> tuple[IngestResult, IngestReply]:
        """Ingest in one transaction; `decode` fills `decoding` (decoded packets and their rendering)."""
        device_id = authentic.device_id

        def tracked_decode(state: str | None) -> DecodedUpload:
            decode(state)
            assert decoding.decoded is not None
            return decoding.decoded

        def outbox(result: IngestResult) -> list[OutboxMessage]:
            if not self.outbox or not decoding.rendered:
                return []
            return outbox_messages(device_id, result, new_packets(decoding.rendered, result), received_at)

        request = IngestRequest(
            device_id=device_id, nonce=authentic.nonce, envelope_sha256=authentic.envelope_sha256,
            body_bytes=authentic.body_bytes, decode=tracked_decode,
            reply=lambda result: json.dumps(reply(result, decoding), separators=(",", ":")), outbox=outbox,
        )
        result = await self.storage.ingest(request)
        self.events.publish("upload", device_id, {
            "upload_id": result.upload_id, "nonce": result.nonce, "verdict": str(result.verdict),
            "packets": len(result.packets), "new_packets": result.new_packets, "samples": result.samples_stored})
        if result.verdict in (Verdict.REPLAY, Verdict.RESEND):
            raise ReplayError(REPLAYED, result.nonce)
        fresh = new_packets(decoding.rendered, result) if decoding.rendered else []
        if result.verdict is Verdict.ACCEPTED and fresh and self.events.subscriber_count:
            self.events.publish("telemetry", device_id,
                                json.loads(telemetry_payload(device_id, result, fresh, received_at)))
        assert result.reply is not None
        return result, IngestReply(200, result.reply, str(result.verdict), device_id, result.upload_id)

    # --- the three routes ---

    def _render(self, device_id: str, packets: Sequence[PacketIn], received_at: float) -> list[RenderedPacket]:
        """The packets' telemetry JSON, when anyone will read it: the outbox, or a live event subscriber."""
        if not self.outbox and not self.events.subscriber_count:
            return []
        return [render_packet(device_id, p, received_at) for p in packets]

    def _predict(self, device_id: str, document: UploadDocument | None, received_at: float) -> _Prediction | None:
        """Decode before the transaction with the mirror this process committed last, if it has one."""
        cached = self.mirrors.take(device_id)
        if cached is None or document is None:
            return None
        assumed, mirror = cached
        decoded = decode_with_mirror(document, mirror, received_at)
        rendered = self._render(device_id, decoded.packets, received_at)
        return _Prediction(assumed, decoded, rendered, mirror)

    async def process(self, body: bytes) -> IngestReply:
        """`POST /process`: a firmware upload (§4)."""
        authentic = await self._authenticate(body, None)
        document: UploadDocument | None = None
        problem = None
        try:
            document = parse_upload_document(authentic.opened.document)
        except DocumentError as error:
            problem = f"document not decodable, data lost: {error}"[:500]
        received_at = self.wall_clock()
        device_id = authentic.device_id
        prediction = self._predict(device_id, document, received_at)
        decoding = _Decoding()

        def decode(state: str | None) -> None:
            if prediction is not None and state == prediction.assumed_state:
                decoding.decoded, decoding.rendered = prediction.decoded, prediction.rendered
                decoding.mirror = prediction.mirror
                return
            mirror = DeviceMirror.load(state)
            decoding.decoded = decode_with_mirror(document, mirror, received_at, problem=problem)
            decoding.rendered = self._render(device_id, decoding.decoded.packets, received_at)
            decoding.mirror = mirror

        def reply(result: IngestResult, decoding: _Decoding) -> dict[str, Any]:
            decoded = decoding.decoded
            statuses = [p.status for p in decoded.packets] if decoded else []
            answer: dict[str, Any] = {
                "status": "success", "success": True, "device_id": device_id, "upload_id": result.upload_id,
                "nonce": result.nonce, "packets": len(result.packets), "new_packets": result.new_packets,
                "samples": result.samples_stored, "undecodable": statuses.count(PacketStatus.UNDECODABLE),
                "ambiguous": statuses.count(PacketStatus.AMBIGUOUS),
            }
            if decoded is not None and decoded.reason:
                answer["note"] = decoded.reason
            return answer

        result, answer = await self._store(authentic, decode, reply, decoding, received_at)
        state = decoding.decoded.codec_state if decoding.decoded is not None else None
        if result.verdict is Verdict.ACCEPTED and state is not None and decoding.mirror is not None:
            self.mirrors.put(device_id, state, decoding.mirror)
        return answer

    async def validate(self, body: bytes, url_device_id: str) -> IngestReply:
        """`POST /security/validate/<id>` (the seed's): authenticate and spend the nonce, store no data."""
        authentic = await self._authenticate(body, url_device_id)
        if authentic.device_id != url_device_id:
            await self._refuse_other_device(authentic, url_device_id)
        text = authentic.opened.document.decode("utf-8", errors="replace")

        decoding = _Decoding()

        def decode(state: str | None) -> None:
            decoding.decoded = DecodedUpload((), None, "validated only (/security/validate): no data stored")

        def reply(result: IngestResult, decoding: _Decoding) -> dict[str, Any]:
            return {"success": True, "device_id": url_device_id, "nonce": result.nonce, "decrypted_payload": text}

        _, answer = await self._store(authentic, decode, reply, decoding, self.wall_clock())
        return answer

    async def aggregated(self, body: bytes, url_device_id: str) -> IngestReply:
        """`POST /aggregated/<id>` (the seed's): an envelope around seed-family data (§9.1)."""
        authentic = await self._authenticate(body, url_device_id)
        if authentic.device_id != url_device_id:
            await self._refuse_other_device(authentic, url_device_id)
        received_at = self.wall_clock()
        try:
            fields = load_object(authentic.opened.document, DocumentError, "inner document")
            seed = read_seed_upload(fields, authentic.nonce, received_at)
        except EcoWattError as error:
            await self._reject_document(authentic, error)
        message = ("Compressed data processed and published" if seed.kind == "compressed"
                   else "Aggregated data processed and published")

        rendered = self._render(url_device_id, [seed.packet], received_at)
        decoding = _Decoding()

        def decode(state: str | None) -> None:
            decoding.decoded, decoding.rendered = DecodedUpload([seed.packet], None), rendered

        def reply(result: IngestResult, decoding: _Decoding) -> dict[str, Any]:
            return {"success": True, "device_id": url_device_id, "message": message, "upload_id": result.upload_id,
                    "samples_count": len(seed.packet.samples), "new_packets": result.new_packets}

        _, answer = await self._store(authentic, decode, reply, decoding, received_at)
        return answer

    # --- statistics ---

    async def security_stats(self) -> dict[str, Any]:
        verdicts = await self.storage.upload_verdicts()
        nonces = await self.storage.list_nonce_states()
        accepted = verdicts.get(str(Verdict.ACCEPTED), 0)
        attributed = sum(verdicts.values())
        total = attributed + self.unattributed_rejections
        return {
            "total_validations": total,
            "successful_validations": accepted,
            "failed_validations": total - accepted,
            "replay_attacks_blocked": verdicts.get(str(Verdict.REPLAY), 0) + verdicts.get(str(Verdict.RESEND), 0),
            "resends_answered": verdicts.get(str(Verdict.RESEND), 0),
            "signature_failures": verdicts.get("bad_mac", 0),
            "device_mismatches": verdicts.get("device_mismatch", 0),
            "bad_documents": verdicts.get("bad_document", 0),
            "unattributed_rejections": self.unattributed_rejections,
            "devices_tracked": len(nonces),
            "total_nonces": sum(1 for n in nonces if n.last_nonce is not None),
            "success_rate": round(accepted / total, 4) if total else None,
            "verdicts": verdicts,
        }

