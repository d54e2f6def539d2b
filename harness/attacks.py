"""Uploads an attacker sends to the cloud: an envelope signed with any key and nonce (a captured one
replayed, one signed with a key no device has, one a device signs in another device's name) and a
tampered one, its signed document changed after signing."""

from __future__ import annotations

import base64
import json

from protocol.envelope import build_envelope


def signed_upload(key: bytes, nonce: int, document: bytes) -> bytes:
    """The envelope the firmware would send for `document` under `key` and `nonce` (byte for byte)."""
    return build_envelope(key, nonce, document)


def tampered(envelope: bytes) -> bytes:
    """The envelope with one byte of its signed document changed (nonce and MAC kept)."""
    fields = json.loads(envelope)
    document = bytearray(base64.b64decode(fields["payload"]))
    position = document.index(b'"timestamp":') + len(b'"timestamp":')
    document[position] = ord("9") if document[position] != ord("9") else ord("8")
    fields["payload"] = base64.b64encode(bytes(document)).decode("ascii")
    return json.dumps(fields, separators=(",", ":")).encode("utf-8")
