from primary.api.ratelimit import FailureLimiter
from primary.server.bounds import source_key


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


def test_ipv6_addresses_count_by_their_64_and_mapped_ipv4_as_itself():
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:ffff::9")
    assert source_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("::ffff:10.0.0.1") == source_key("10.0.0.1") == "10.0.0.1"
    assert source_key("fe80::1%eth0") == "fe80::/64"
    assert source_key("unknown") == "unknown"


def test_sources_whose_failures_aged_out_are_forgotten():
    now = [1000.0]
    limiter = FailureLimiter(limit=3, window=60, clock=lambda: now[0])
    for i in range(1000):  # a scan from many addresses, one failure each
        limiter.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) == 1000
    now[0] += 61
    assert limiter.retry_after("10.9.9.9") == 0  # any request sweeps, once per window
    assert len(limiter) == 0
