from agent.backoff import Backoff, short_pause


def test_ceiling_doubles_from_half_a_second_up_to_the_cap():
    b = Backoff(rand=lambda: 1.0)
    delays = [b.next_delay() for _ in range(10)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


def test_full_jitter_stays_between_zero_and_the_ceiling():
    b = Backoff()
    for _ in range(200):
        ceiling = b.ceiling()
        delay = b.next_delay()
        assert 0.0 <= delay <= ceiling <= 30.0


def test_reset_starts_again_from_the_initial_delay():
    b = Backoff(rand=lambda: 1.0)
    for _ in range(5):
        b.next_delay()
    b.reset()
    assert b.next_delay() == 0.5


def test_many_failures_do_not_overflow():
    b = Backoff(rand=lambda: 1.0)
    for _ in range(5000):
        b.next_delay()
    assert b.next_delay() == 30.0


def test_short_pause_is_about_half_a_second_to_a_second():
    for _ in range(100):
        assert 0.5 <= short_pause() <= 1.0
