"""The pure parts of a notification: its headers and signature, and the retry delays."""

import hashlib
import hmac
import random

from primary.notifications import delivery


def test_the_signature_is_githubs_hmac_of_the_exact_body():
    body = b'{"event":"run.finished"}'
    headers = delivery.headers(42, "finished", body, "k3y")
    assert headers["X-Cifleet-Delivery"] == "42"
    assert headers["X-Cifleet-Event"] == "run.finished"
    expected = hmac.new(b"k3y", body, hashlib.sha256).hexdigest()
    assert headers["X-Cifleet-Signature-256"] == f"sha256={expected}"
    assert "X-Cifleet-Signature-256" not in delivery.headers(42, "finished", body, None)


def test_retries_double_from_the_base_up_to_an_hour_with_a_quarter_of_jitter():
    class Fixed(random.Random):
        def random(self) -> float:
            return 1.0

    no_jitter = random.Random()
    no_jitter.random = lambda: 0.0
    assert [delivery.retry_delay(n, 5, no_jitter) for n in (1, 2, 3)] == [5, 10, 20]
    assert delivery.retry_delay(30, 5, no_jitter) == delivery.MAX_DELAY
    assert delivery.retry_delay(1, 5, Fixed()) == 6.25


def test_only_2xx_is_delivered():
    assert [s for s in (199, 200, 204, 299, 300, 404, 500) if delivery.delivered(s)] == [
        200,
        204,
        299,
    ]
