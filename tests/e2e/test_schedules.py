"""Pipeline schedules on two primaries sharing one PostgreSQL: the latest slot fires once
(one primary makes the run, the other finds it fired), slots missed while the fleet was
down fire once, not once each, and a restart fires nothing again. The clock is never
waited on: the pipeline's definition is made to look saved days ago (the store's
`updated_at`), so its latest slot is already due."""

import datetime
import time

import psycopg
from fleet import Primary, wait_for

from primary.runs.runs import trigger_text

DAY = 86400.0


def noted(primary: Primary, text: str) -> bool:
    return text in primary.log_path.read_text()


def test_the_latest_slot_fires_once_with_two_primaries_and_across_a_restart(two_primaries, pg_url):
    one, two = two_primaries
    # Daily, twelve hours from now: no slot falls due while the test runs.
    hour = (datetime.datetime.now(datetime.UTC).hour + 12) % 24
    cron = f"0 {hour} * * *"
    one.pipeline(
        f"name: nightly\nschedule: {{cron: '{cron}', timezone: UTC}}\n"
        "jobs:\n  - name: a\n    steps: ['true']\n"
    )
    slot = datetime.datetime.now(datetime.UTC).replace(minute=0, second=0, microsecond=0)
    slot = slot.replace(hour=hour) - datetime.timedelta(days=1 if hour > slot.hour else 0)
    slot_text = slot.isoformat(timespec="milliseconds")
    # Saved just now, it waits for its next slot: nothing fires (both primaries look).
    assert one.client.json("GET", "/api/v1/runs?pipeline=nightly")["runs"] == []
    # As if saved three days ago, and the fleet down since: three slots missed.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE pipelines SET updated_at = %s WHERE name = 'nightly'", (time.time() - 3 * DAY,)
        )
    already = f"schedule of nightly: slot {slot_text} is fired already"
    wait_for(lambda: noted(one, already) and noted(two, already), 30, "both primaries to look")
    runs = one.client.json("GET", "/api/v1/runs?pipeline=nightly")["runs"]
    assert len(runs) == 1, runs
    fired = [p for p in (one, two) if noted(p, f"schedule of nightly: slot {slot_text} fired")]
    assert len(fired) == 1, "one primary made the run"
    run = one.run(runs[0]["id"])
    assert run["trigger"] == {
        "kind": "schedule",
        "cron": cron,
        "timezone": "UTC",
        "slot": slot_text,
    }
    assert trigger_text(run["trigger"]) == f"the schedule '{cron}' (UTC), slot {slot_text}"

    # Both down, one back: the slot it finds is fired, and nothing runs again.
    one.stop()
    two.stop()
    one.log_path.write_text("")
    one.start()
    wait_for(lambda: noted(one, already), 30, "the restarted primary to look")
    assert [r["id"] for r in one.client.json("GET", "/api/v1/runs?pipeline=nightly")["runs"]] == [
        run["id"]
    ]
