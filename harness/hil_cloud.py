"""`HilCloud`: the cloud as a scenario sees it, an operator-API client with the helpers scenarios need.

It talks to the cloud only over HTTP (bearer token, loopback), so it is the same in-process and against
a cloud in another process. Reads page through the read API until the end; every refusal is an
`OperatorError` whose text is the server's one-line reason and status.

    await hil_cloud.set_config("ESP32_EcoWatt_Smart", upload=60, registers=["Vac1", "Pac"])
    await hil_cloud.queue_command(device_id, "set_power", value=50)
    release = await hil_cloud.publish_firmware("1.2.0", profile="spec")
    await hil_cloud.rollout("1.2.0", [device_id])
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any
from urllib.parse import quote

from cloud.operator_client import OperatorClient, SseEvent, _refusal
from cloud.operator_client import OperatorError as OperatorError  # what scenarios catch, re-exported
from protocol.esp_image import build_firmware_image

# Parts of a firmware upload: under the service's request body limit (256 KiB), with room for headers.
UPLOAD_PART = 192 * 1024
PAGE = 10_000  # the read API's largest page


def _segment(value: str) -> str:
    return quote(value, safe="")


class HilCloud:
    """`async with HilCloud(url, token) as cloud: ...` (the stack opens and closes it for scenarios)."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.client = OperatorClient(self.url, token or "")

    async def open(self) -> HilCloud:
        await self.client.__aenter__()
        return self

    async def close(self) -> None:
        await self.client.__aexit__(None, None, None)

    async def __aenter__(self) -> HilCloud:
        return await self.open()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def request(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        """One operator request (JSON in, JSON out); OperatorError when refused or unreachable."""
        query = {k: str(v) for k, v in params.items() if v is not None}
        return await self.client.request(method, path, body, params=query or None)

    async def _pages(self, path: str, key: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a paged read-API list (pages continue with `after_id`)."""
        items: list[dict[str, Any]] = []
        after = 0
        while True:
            page = await self.request("GET", path, limit=PAGE, after_id=after, **params)
            items += page[key]
            after = page.get("next_after_id")
            if not after:
                return items

    # --- what devices sent -----------------------------------------------------------------------

    async def telemetry(self, device_id: str, **params: Any) -> list[dict[str, Any]]:
        """Every decoded sample row (one per register) the cloud stored for the device, oldest first."""
        return await self._pages(f"/api/v1/devices/{_segment(device_id)}/telemetry", "samples", **params)

    async def uploads(self, device_id: str) -> list[dict[str, Any]]:
        """Every upload the device made (accepted, resend or replay), oldest first, with its nonce."""
        return await self._pages(f"/api/v1/devices/{_segment(device_id)}/uploads", "uploads")

    async def packets(self, device_id: str) -> list[dict[str, Any]]:
        """Every stored packet with its decode status and reason (undecodable ones included)."""
        return await self._pages(f"/api/v1/devices/{_segment(device_id)}/packets", "packets")

    async def device(self, device_id: str) -> dict[str, Any]:
        """The device as the cloud knows it: reported firmware, last nonce, config, OTA session."""
        result: dict[str, Any] = await self.request("GET", f"/api/v1/devices/{_segment(device_id)}")
        return result

    async def devices(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self.request("GET", "/api/v1/devices"))["devices"]
        return result

    async def diagnostics(self, device_id: str) -> Any:
        return await self.request("GET", f"/diagnostics/{_segment(device_id)}")

    # --- commands ----------------------------------------------------------------------------------

    async def queue_command(self, device_id: str, type: str, **params: Any) -> dict[str, Any]:
        """Queue a command (`set_power`, `write_register`, ...) with its parameters; the cloud's answer."""
        result: dict[str, Any] = await self.client.queue_command(device_id, type, params)
        return result

    async def command_status(self, command_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.client.command_status(command_id)
        return result

    async def commands(self, device_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        """The device's command history, as the read API lists it."""
        answer = await self.client.command_history(device_id, limit)
        return _listing(answer, "commands")

    # --- configuration -----------------------------------------------------------------------------

    async def set_config(
        self,
        device_id: str,
        poll: int | None = None,
        upload: int | None = None,
        registers: list[str | int] | None = None,
    ) -> dict[str, Any]:
        """Ask for a new configuration (intervals in seconds, registers by name or address)."""
        names = None if registers is None else [str(r) for r in registers]
        result: dict[str, Any] = await self.client.set_config(device_id, poll_s=poll, upload_s=upload,
                                                              registers=names)
        return result

    async def config(self, device_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"/api/v1/devices/{_segment(device_id)}/config")
        return result

    async def config_history(self, device_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        """Every configuration version, newest first, with its delivery and the device's answer."""
        return _listing(await self.client.config_history(device_id, limit), "history")

    # --- OTA -----------------------------------------------------------------------------------------

    async def publish_firmware(
        self,
        version: str,
        profile: str = "spec",
        *,
        image: bytes | None = None,
        size: int | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Build an image of `profile` and `version` (or take `image`), upload it in parts and publish it:
        the cloud encrypts, signs and prepares the release. Returns the published firmware."""
        data = image if image is not None else build_firmware_image(profile, version, size=size)
        upload = await self.request("POST", "/api/v1/firmware/uploads")
        upload_id = _segment(upload["upload_id"])
        for offset in range(0, len(data), UPLOAD_PART):
            await self._put(f"/api/v1/firmware/uploads/{upload_id}?offset={offset}",
                            data[offset : offset + UPLOAD_PART])
        body = {"version": version, "upload_id": upload["upload_id"],
                "sha256": hashlib.sha256(data).hexdigest(), **options}
        result: dict[str, Any] = await self.request("POST", "/api/v1/firmware", body)
        return result

    async def _put(self, path: str, data: bytes) -> None:
        session = self.client.session
        async with session.put(self.url + path, data=data) as response:
            if response.status >= 400:
                raise _refusal(await response.text(errors="replace"), response.status)

    async def rollout(self, version: str, devices: list[str], **extra: Any) -> dict[str, Any]:
        """Offer `version` to `devices` (they take it at their next OTA check)."""
        result: dict[str, Any] = await self.request(
            "POST", "/api/v1/rollouts", {"version": version, "devices": devices, **extra})
        return result

    async def ota(self, device_id: str) -> dict[str, Any]:
        """The device's OTA history: reported version, rollout, sessions and reports."""
        result: dict[str, Any] = await self.request("GET", f"/api/v1/devices/{_segment(device_id)}/ota")
        return result

    # --- the cloud's own faults ----------------------------------------------------------------------

    async def fault_enable(
        self,
        fault_type: str,
        *,
        probability: float | None = None,
        duration_s: float | None = None,
        device_id: str | None = None,
        **parameters: Any,
    ) -> dict[str, Any]:
        """Make the cloud misbehave for real (`delay`, `http_500`, `http_503`, `drop`, `truncate`,
        `corrupt_chunk`, `wrong_hash`); see `GET /fault/available`."""
        result: dict[str, Any] = await self.client.inject_fault(
            fault_type, probability=probability, duration_s=duration_s, device_id=device_id,
            parameters=parameters)
        return result

    async def fault_clear(self, device_id: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self.client.clear_faults(device_id)
        return result

    async def fault_events(self) -> list[dict[str, Any]]:
        """The faults the cloud injected (kind, device, target), newest first (the last 1000)."""
        return _listing(await self.request("GET", "/fault/events", limit=1000), "events")

    # --- service -------------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", "/health")
        return result

    async def metrics(self) -> str:
        """The Prometheus exposition text of `/metrics`."""
        async with self.client.session.get(self.url + "/metrics") as response:
            return await response.text()

    def events(self, device_id: str | None = None) -> AsyncIterator[SseEvent]:
        """The live event stream (`/api/v1/events`)."""
        return self.client.events(device_id=device_id)


def _listing(answer: Any, key: str) -> list[dict[str, Any]]:
    """The list under `key` of an answer (or the answer itself when it is a list)."""
    if isinstance(answer, list):
        return answer
    items = answer.get(key) if isinstance(answer, dict) else None
    return list(items) if isinstance(items, list) else []
