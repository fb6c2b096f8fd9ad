"""The platforms' own signature and encryption schemes, as their documentation describes them.

- WeCom / WeChat (WXBizMsgCrypt): `msg_signature = sha1(''.join(sorted([token, timestamp, nonce, encrypt])))`;
  AES-256-CBC with key = base64decode(EncodingAESKey + "="), IV = key[:16]; the plaintext is
  16 random bytes + 4-byte big-endian length + message + receive id (CorpID / AppID), PKCS#7-padded to 32 bytes.
- Feishu: `encrypt = base64(iv16 + AES-256-CBC(key=sha256(encrypt_key), iv))`, PKCS#7 to 16 bytes;
  `X-Lark-Signature = sha256(timestamp + nonce + encrypt_key + raw_body)` in hex.
- DingTalk, Slack, generic: HMAC-SHA256 (see `hmac_sha256`).

Every comparison of a secret-derived value is constant-time (`same`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from faq.errors import FaqbotError


class CryptoError(FaqbotError, ValueError):
    """A payload that does not decrypt, or decrypts to something malformed: the sender lacks our key."""

    code = "bad_encryption"


def same(a: str | bytes, b: str | bytes) -> bool:
    """Constant-time equality (so a signature cannot be guessed byte by byte from response times)."""
    left = a.encode() if isinstance(a, str) else a
    right = b.encode() if isinstance(b, str) else b
    return hmac.compare_digest(left, right)


def hmac_sha256(key: str | bytes, message: str | bytes) -> bytes:
    raw_key = key.encode() if isinstance(key, str) else key
    raw_message = message.encode() if isinstance(message, str) else message
    return hmac.new(raw_key, raw_message, hashlib.sha256).digest()


def _aes_cbc(key: bytes, iv: bytes, data: bytes, *, encrypt: bool) -> bytes:
    cipher = Cipher(algorithms.AES(key), modes.CBC(iv))
    worker = cipher.encryptor() if encrypt else cipher.decryptor()
    return worker.update(data) + worker.finalize()


def pkcs7_pad(data: bytes, block: int) -> bytes:
    amount = block - len(data) % block
    return data + bytes([amount]) * amount


def pkcs7_unpad(data: bytes, block: int) -> bytes:
    if not data:
        raise CryptoError("empty plaintext")
    amount = data[-1]
    if amount < 1 or amount > block or data[-amount:] != bytes([amount]) * amount:
        raise CryptoError("bad padding")
    return data[:-amount]


class WXBizMsgCrypt:
    """WeCom / WeChat Official Account message encryption (the scheme of Tencent's WXBizMsgCrypt samples)."""

    BLOCK = 32

    def __init__(self, token: str, encoding_aes_key: str, receive_id: str) -> None:
        try:
            self.key = base64.b64decode(encoding_aes_key + "=", validate=True)
        except binascii.Error as exc:
            raise ValueError("EncodingAESKey is not base64") from exc
        if len(self.key) != 32:
            raise ValueError("EncodingAESKey must decode to 32 bytes (43 characters)")
        self.token = token
        self.receive_id = receive_id

    def signature(self, timestamp: str, nonce: str, encrypted: str) -> str:
        return hashlib.sha1("".join(sorted([self.token, timestamp, nonce, encrypted])).encode()).hexdigest()

    def verify(self, signature: str, timestamp: str, nonce: str, encrypted: str) -> bool:
        return same(self.signature(timestamp, nonce, encrypted), signature)

    def encrypt(self, message: str) -> str:
        body = message.encode("utf-8")
        plain = os.urandom(16) + struct.pack(">I", len(body)) + body + self.receive_id.encode()
        return base64.b64encode(_aes_cbc(self.key, self.key[:16], pkcs7_pad(plain, self.BLOCK), encrypt=True)).decode()

    def decrypt(self, encrypted: str) -> str:
        """The message inside `encrypted`; CryptoError if it is not ours (wrong key, or another receive id)."""
        try:
            data = base64.b64decode(encrypted, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CryptoError("not base64") from exc
        if not data or len(data) % 16:
            raise CryptoError("ciphertext is not whole AES blocks")
        plain = pkcs7_unpad(_aes_cbc(self.key, self.key[:16], data, encrypt=False), self.BLOCK)
        if len(plain) < 20:
            raise CryptoError("plaintext too short")
        (length,) = struct.unpack(">I", plain[16:20])
        if 20 + length > len(plain):
            raise CryptoError("length field past the end")
        message, receive_id = plain[20:20 + length], plain[20 + length:]
        if not same(receive_id, self.receive_id.encode()):
            raise CryptoError("message is for another CorpID/AppID")
        try:
            return message.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CryptoError("message is not UTF-8") from exc


def plain_signature(token: str, timestamp: str, nonce: str) -> str:
    """WeChat Official Account `signature` (URL verification): sha1 of sorted token/timestamp/nonce."""
    return hashlib.sha1("".join(sorted([token, timestamp, nonce])).encode()).hexdigest()


def feishu_decrypt(encrypt_key: str, encrypted: str) -> str:
    """Feishu's `{"encrypt": ...}`: base64(iv + AES-256-CBC(sha256(encrypt_key), iv)), PKCS#7."""
    try:
        data = base64.b64decode(encrypted, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CryptoError("not base64") from exc
    if len(data) < 32 or len(data) % 16:
        raise CryptoError("ciphertext is not an IV plus whole AES blocks")
    key = hashlib.sha256(encrypt_key.encode()).digest()
    plain = pkcs7_unpad(_aes_cbc(key, data[:16], data[16:], encrypt=False), 16)
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CryptoError("event is not UTF-8") from exc


def feishu_signature(timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> str:
    return hashlib.sha256((timestamp + nonce + encrypt_key).encode() + body).hexdigest()
