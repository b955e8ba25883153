"""One notification as an HTTP request, and what its answer means. Pure.

The receiver checks `X-Cifleet-Signature-256: sha256=HEX`, the HMAC-SHA256 of the exact body
with the pipeline's `notify.secret` (GitHub's scheme, so the same verifying code serves), and
deduplicates by `X-Cifleet-Delivery`: a delivery is retried until a 2xx arrives, so a receiver
that answered too slowly may see one twice.
"""

import hashlib
import hmac
import random

MAX_ATTEMPTS = 10
MAX_DELAY = 3600.0


def headers(delivery_id: int, event: str, body: bytes, secret: str | None) -> dict[str, str]:
    out = {
        "Content-Type": "application/json",
        "User-Agent": "cifleet-notifications",
        "X-Cifleet-Event": f"run.{event}",
        "X-Cifleet-Delivery": str(delivery_id),
    }
    if secret is not None:
        out["X-Cifleet-Signature-256"] = "sha256=" + sign(secret, body)
    return out


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivered(status: int) -> bool:
    return 200 <= status < 300


def retry_delay(attempts: int, base: float, rand: random.Random | None = None) -> float:
    """Seconds before attempt `attempts + 1`: doubling from `base`, at most MAX_DELAY, with
    up to a quarter of jitter so a receiver that comes back is not hit by every primary at
    once."""
    delay = min(base * 2 ** (attempts - 1), MAX_DELAY)
    return delay * (1 + (rand or random).random() / 4)
