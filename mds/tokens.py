"""Pod identity for the metadata service: per-pod tokens and the hmac sign/verify primitive.

Tokens are HMAC-SHA256(token-key, uuid) in hex (256 bits): unguessable, never the UUID itself,
and derivable again after a supervisor restart without storing them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid as uuidlib


def pod_token(token_key: bytes, pod_uuid: str) -> str:
    return hmac.new(token_key, pod_uuid.encode("ascii"), hashlib.sha256).hexdigest()


def tokens_equal(given: str, expected: str) -> bool:
    """Constant-time comparison, so response timing never leaks a token prefix."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("ascii"))


def sign(signing_key: bytes, pod_uuid: str, content: bytes) -> str:
    """base64(HMAC-SHA512(key, uuid bytes || content)), as rkt's metadata service signs."""
    mac = hmac.new(signing_key, uuidlib.UUID(pod_uuid).bytes + content, hashlib.sha512)
    return base64.b64encode(mac.digest()).decode("ascii")


def verify(signing_key: bytes, pod_uuid: str, content: bytes, signature: str) -> bool:
    try:
        expected = sign(signing_key, pod_uuid, content)
    except ValueError:  # not a UUID
        return False
    return hmac.compare_digest(signature.strip().encode("utf-8", "replace"),
                               expected.encode("ascii"))
