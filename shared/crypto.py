"""Personal data at rest: AES-256-GCM with a key derived (HKDF) from the platform's data key.

A blob is ``version (1 byte) | nonce (12) | ciphertext+tag``; the associated data binds it to
its purpose, field and record, so a value copied onto another row or column does not decrypt.
One derived key per purpose, so the data key never serves two algorithms or two services.
"""

from __future__ import annotations

import os
import uuid

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = b"\x01"


class FieldCipher:
    def __init__(self, data_key: bytes, purpose: str):
        self._purpose = purpose.encode()
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=b"changai/" + self._purpose, info=b"aes-256-gcm v1"
        ).derive(data_key)
        self._aes = AESGCM(key)

    def _aad(self, field: str, record_id: uuid.UUID) -> bytes:
        return b"changai/" + self._purpose + b"/" + field.encode() + b"/" + record_id.bytes

    def seal(self, field: str, record_id: uuid.UUID, value: str) -> bytes:
        nonce = os.urandom(12)
        return VERSION + nonce + self._aes.encrypt(nonce, value.encode(), self._aad(field, record_id))

    def open(self, field: str, record_id: uuid.UUID, blob: bytes) -> str:
        if blob[:1] != VERSION:
            raise ValueError("unknown ciphertext version")
        return self._aes.decrypt(blob[1:13], blob[13:], self._aad(field, record_id)).decode()
