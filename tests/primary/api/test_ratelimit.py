from primary.api.ratelimit import FailureLimiter


def test_failures_beyond_the_limit_are_refused_until_they_age_out():
    now = [1000.0]
    limiter = FailureLimiter(limit=3, window=60, clock=lambda: now[0])
    for _ in range(3):
        assert limiter.retry_after("10.0.0.1") == 0
        limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 60
    assert limiter.retry_after("10.0.0.2") == 0  # other addresses are not affected
    now[0] += 45
    assert limiter.retry_after("10.0.0.1") == 15
    now[0] += 15
    assert limiter.retry_after("10.0.0.1") == 0  # the oldest failure aged out
