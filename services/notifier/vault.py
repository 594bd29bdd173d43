"""Channel secrets at rest: AES-256-GCM under the platform's data key, bound to the channel id.

Stored as ``version (1 byte) | nonce (12) | ciphertext+tag``; the channel id is the
associated data, so a blob copied onto another channel does not decrypt.
"""

from __future__ import annotations

import base64
import os
import secrets as _secrets
import uuid

import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = b"\x01"


def seal(key: bytes, channel_id: uuid.UUID, secrets: dict) -> bytes:
    nonce = os.urandom(12)
    return VERSION + nonce + AESGCM(key).encrypt(nonce, orjson.dumps(secrets), channel_id.bytes)


def open_(key: bytes, channel_id: uuid.UUID, blob: bytes) -> dict:
    if not blob or blob[:1] != VERSION:
        raise ValueError("unknown secret format")
    return orjson.loads(AESGCM(key).decrypt(blob[1:13], blob[13:], channel_id.bytes))


def new_webhook_secret() -> str:
    """``whsec_`` + base64 of 32 random bytes (Standard Webhooks: at least 24)."""
    return "whsec_" + base64.b64encode(_secrets.token_bytes(32)).decode()
