"""Runs pages in a real browser with a real agent: a run triggered from the UI whose log
grows in the page while its job runs (the test decides when the job goes on, by creating
files it waits for), ANSI colours, auto-scroll, every byte once across the page's requests,
pages that hold no stream, the event stream's resume and cap, Cancel, filters, and what a
viewer may not do."""

import http.client
import json
import re
import signal
import ssl
import threading

import pytest
from fleet import wait_file_step, wait_for
from widths import both_widths, no_sideways_overflow

pytestmark = pytest.mark.e2e

SGR = re.compile(r"\x1b\[[0-9;]*m")
# The event stream (which the page no longer opens) ends after 3 s here, so its own checks
# at the end of a test are quick.
SHORT_STREAMS = ("--log-stream-seconds", "3")


def pipeline_yaml(name: str, jobs: dict[str, list[str]], tags: tuple[str, ...] = ()) -> str:
    lines = [f"name: {name}"]
    if tags:
        lines.append(f"tags: [{', '.join(tags)}]")
    lines.append("jobs:")
    for job, steps in jobs.items():
        lines += [f"  - name: {job}", "    steps:"]
        lines += [f"      - {json.dumps(step)}" for step in steps]  # JSON strings are YAML
    return "\n".join(lines) + "\n"


def run_from_pipeline_page(page, name: str) -> int:
    from playwright.sync_api import expect

    page.goto(f"/pipelines/{name}")
    page.get_by_role("button", name="Run").click()
    expect(page).to_have_url(re.compile(r"/runs/\d+$"))
    return int(page.url.rsplit("/", 1)[1])


def stored_log(primary, run_id: int) -> bytes:
    status, _, body = primary.client.request("GET", f"/api/v1/runs/{run_id}/log")
    assert status == 200
    return body


def parse_events(stream: bytes) -> list[dict]:
    """text/event-stream -> [{"event", "id", "data"}] (comments and retry lines skipped)."""
    events = []
    for block in stream.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        if "event" in fields:
            events.append(
                {
                    "event": fields["event"],
                    "id": fields.get("id"),
                    "data": json.loads(fields["data"]),
                }
            )
    return events


def hold_stream(primary, path: str, cookies: str, opened: threading.Event) -> None:
    """Read an event stream to its end, in a thread of its own (Playwright is not for
    threads: the cookies are taken before); `opened` is set once it is answered."""
    context = ssl.create_default_context(cafile=str(primary.ca_file))
    conn = http.client.HTTPSConnection("127.0.0.1", primary.api_port, context=context, timeout=120)
    try:
        conn.request("GET", path, headers={"Cookie": cookies})
        response = conn.getresponse()
        assert response.status == 200
        opened.set()
        response.read()
    finally:
        conn.close()


def at_bottom(log) -> bool:
    return log.evaluate("el => el.scrollHeight - el.scrollTop - el.clientHeight < 4")


@pytest.mark.parametrize("primary", [SHORT_STREAMS], indirect=True)
def test_a_run_started_in_the_ui_shows_its_log_growing_in_colour_and_resumes_exactly(
    page, login, primary, start_agent, tmp_path, shot, session_get
):
    from playwright.sync_api import expect

    start_agent("builder-1")
    go_on, finish = tmp_path / "go-on", tmp_path / "finish"
    steps = [
        'for i in $(seq 1 60); do echo "early line $i"; done',
        r"printf 'naïve ✓ \033[33mwarning\033[0m: '",
        r"printf '\033[1;31mred bold\033[0m, \033[32mgreen\033[0m\n'",
        wait_file_step(go_on),
        'for i in $(seq 1 40); do echo "late line $i"; done',
        wait_file_step(finish),
        "echo last line",
    ]
    primary.pipeline(pipeline_yaml("live", {"build": steps, "test": ["echo tested"]}))
    login(page, "admin")
    run_id = run_from_pipeline_page(page, "live")

    log = page.locator("#log")
    expect(log).to_contain_text("early line 60")
    expect(log.locator("span.ansi-fg-31.ansi-bold")).to_have_text("red bold")
    expect(log.locator("span.ansi-fg-33")).to_have_text("warning")
    expect(page.locator("#run-state")).to_have_text("running")
    expect(page.locator('tr[data-job="build"] [data-state]')).to_have_text("running")
    assert primary.run(run_id)["jobs"][0]["state"] == "running"  # it waits for go-on
    assert "late line" not in log.text_content()
    assert at_bottom(log)  # it followed the output
    shot(page, "run")

    def requests() -> int:
        return int(log.get_attribute("data-requests") or 0)

    # Each part of the output is let out only once the page asked for the log again after
    # the part before: every part comes in a request of its own, from the offset the page
    # had reached, however long the steps take.
    sent_early = requests()
    wait_for(lambda: requests() > sent_early + 1, 30, "the page to ask again")

    # Scrolled up by the user: new output does not pull the view down.
    log.hover()
    page.mouse.wheel(0, -100_000)
    expect(page.get_by_role("button", name="Follow the end")).to_be_visible()
    top = log.evaluate("el => el.scrollTop")
    go_on.touch()
    expect(log).to_contain_text("late line 40")
    assert log.evaluate("el => el.scrollTop") == top == 0

    # Back at the bottom: it follows again.
    page.mouse.wheel(0, 100_000)
    expect(page.get_by_role("button", name="Follow the end")).to_be_hidden()
    sent_late = requests()
    wait_for(lambda: requests() > sent_late + 1, 30, "the page to ask again")
    finish.touch()
    expect(log).to_have_attribute("data-complete", "true", timeout=60_000)
    expect(page.locator("#run-state")).to_have_text("success")
    expect(page.locator('tr[data-job="test"] [data-state]')).to_have_text("success")
    assert at_bottom(log)

    # Every byte once, across the requests: the page's text is the stored log with the
    # colour codes turned into spans.
    body = stored_log(primary, run_id)
    shown = log.text_content()
    assert shown == SGR.sub("", body.decode())
    assert shown.count("early line 7\n") == 1 and shown.count("late line 7\n") == 1
    assert "last line\n" in shown and "naïve ✓ warning: red bold, green\n" in shown

    # Resuming from a byte offset (what Last-Event-ID carries) sends exactly the rest.
    middle = body.index(b"late line 1\n")
    status, headers, stream = session_get(
        page, f"/runs/{run_id}/events", {"Last-Event-ID": str(middle)}
    )
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = parse_events(stream)
    logs = [e for e in events if e["event"] == "log"]
    assert "".join(e["data"]["text"] for e in logs) == body[middle:].decode()
    assert int(logs[-1]["id"]) == len(body)
    assert events[-1]["event"] == "end"
    assert events[0]["event"] == "state" and events[0]["data"]["state"] == "success"


@pytest.mark.parametrize("primary", [SHORT_STREAMS], indirect=True)
def test_bytes_that_are_not_utf8_are_shown_replaced_and_the_raw_log_is_exact(
    page, login, primary, start_agent, session_get
):
    from playwright.sync_api import expect

    start_agent("builder-1")
    # "é" is C3 A9: its two bytes come a second apart, so they may reach the primary in
    # different chunks; FF is no UTF-8 at all.
    steps = [r"printf 'caf\303'", "sleep 1", r"printf '\251 \377 end\n'"]
    primary.pipeline(pipeline_yaml("bytes", {"emit": steps}))
    run_id = primary.trigger("bytes")
    login(page, "viewer")
    page.goto(f"/runs/{run_id}")
    log = page.locator("#log")
    expect(log).to_have_attribute("data-complete", "true", timeout=60_000)
    body = stored_log(primary, run_id)
    assert b"caf\xc3\xa9 \xff end\n" in body
    assert log.text_content() == body.decode("utf-8", "replace")
    assert "café \ufffd end" in log.text_content()
    status, headers, raw = session_get(page, f"/runs/{run_id}/log")
    assert (status, raw) == (200, body)


@pytest.mark.parametrize(
    "primary", [("--log-streams", "1", "--log-stream-seconds", "300")], indirect=True
)
@both_widths
def test_pages_hold_no_stream_so_the_cap_blanks_no_log_and_other_pages_load(
    new_page, viewport, login, primary, start_agent, tmp_path, session_get
):
    """Nine run pages in one browser (live, finished and queued runs), with the one event
    stream allowed taken and held: every page shows its log, and /workers loads. (With a
    stream per page, held for 300 s here, the seventh page would wait for a connection.)"""
    from playwright.sync_api import expect

    start_agent("builder-1")
    finish = tmp_path / "finish"
    steps = ['for i in $(seq 1 30); do echo "line $i"; done', wait_file_step(finish), "echo done"]
    primary.pipeline(pipeline_yaml("done", {"build": ["echo finished already"]}))
    finished = primary.wait_run(primary.trigger("done"))["id"]
    primary.pipeline(pipeline_yaml("held", {"build": steps}))
    live = primary.trigger("held")
    primary.pipeline(pipeline_yaml("nobody", {"a": ["true"]}, tags=("no-such-worker",)))
    queued = primary.trigger("nobody")
    first = new_page(viewport)
    login(first, "viewer")
    wait_for(lambda: primary.run(live)["state"] == "running", 60, "the live run to start")

    # The only stream slot, held by a client of the event stream (it ends with the run).
    cookies = "; ".join(f"{c['name']}={c['value']}" for c in first.context.cookies())
    opened = threading.Event()
    holder = threading.Thread(
        target=hold_stream, args=(primary, f"/runs/{live}/events", cookies, opened)
    )
    holder.start()
    assert opened.wait(60), "the event stream was not answered"
    status, headers, body = session_get(first, f"/runs/{live}/events")
    assert status == 503 and headers["Retry-After"] == "5" and body.startswith(b"retry: 5000\n")

    context = first.context
    pages = []
    for run_id in [live] * 4 + [finished] * 4 + [queued]:
        page = context.new_page()
        page.goto(f"/runs/{run_id}")
        pages.append((run_id, page))
    for run_id, page in pages:
        log = page.locator("#log")
        if run_id == live:
            expect(log).to_contain_text("line 30")
        elif run_id == finished:
            expect(log).to_have_attribute("data-complete", "true")
            assert log.text_content() == stored_log(primary, finished).decode()
        else:
            expect(page.locator("#log-status")).to_have_text("waiting for a worker")
    first.goto("/workers")  # a tenth page of the same browser
    expect(first.locator('tr[data-worker="builder-1"]')).to_be_visible()

    finish.touch()
    for _, page in pages[:4]:
        log = page.locator("#log")
        expect(log).to_have_attribute("data-complete", "true", timeout=60_000)
        assert log.text_content() == stored_log(primary, live).decode()
        expect(page.locator("#run-state")).to_have_text("success")
    holder.join(timeout=60)
    assert not holder.is_alive()


def test_a_lost_attempt_stays_in_the_log_and_its_partial_output_is_linked(
    page, login, primary, start_agent, tmp_path, session_get
):
    from playwright.sync_api import expect

    first = start_agent("builder-1")
    finish = tmp_path / "finish"
    steps = ['echo "attempt $CIFLEET_RUN_ATTEMPT started"', wait_file_step(finish), "echo finished"]
    primary.pipeline(pipeline_yaml("fragile", {"build": steps}))
    run_id = primary.trigger("fragile")
    login(page, "viewer")
    page.goto(f"/runs/{run_id}")
    log = page.locator("#log")
    expect(log).to_contain_text("attempt 1 started")

    first.stop(signal.SIGKILL)  # the worker dies; after the heartbeat timeout the run is lost
    expect(log).to_contain_text("=== attempt 1 on builder-1: lost", timeout=60_000)
    start_agent("builder-2")  # ... and re-queued (retries_on_lost: 1 by default) to another
    expect(log).to_contain_text("attempt 2 started", timeout=60_000)
    finish.touch()
    expect(log).to_have_attribute("data-complete", "true", timeout=60_000)
    expect(page.locator("#run-state")).to_have_text("success")
    assert log.text_content() == stored_log(primary, run_id).decode()

    lost = page.locator('#run-history tr[data-attempt="1"]')
    expect(lost).to_contain_text("builder-1")
    expect(lost.locator(".badge")).to_have_text("lost")
    lost.get_by_role("link", name="build").click()
    assert page.locator("body").inner_text() == "attempt 1 started\n"  # its partial output
    status, _, body = primary.client.request(
        "GET", f"/api/v1/runs/{run_id}/attempts/1/jobs/build/log"
    )
    assert (status, body) == (200, b"attempt 1 started\n")
    assert session_get(page, f"/runs/{run_id}/attempts/1/jobs/build/log")[2] == body


def test_cancel_a_running_run_after_confirming(page, login, primary, start_agent):
    from playwright.sync_api import expect

    start_agent("builder-1")
    primary.pipeline(pipeline_yaml("slow", {"build": ["echo started", "sleep 300"]}))
    login(page, "admin")
    run_id = run_from_pipeline_page(page, "slow")
    expect(page.locator("#log")).to_contain_text("started")
    expect(page.locator("#run-state")).to_have_text("running")

    cancel_posts = []

    def record_cancel_post(request) -> None:
        if request.method == "POST" and request.url.endswith(f"/runs/{run_id}/cancel"):
            cancel_posts.append(request.url)

    page.on("request", record_cancel_post)
    dismissed = []
    page.once("dialog", lambda dialog: (dismissed.append(dialog.message), dialog.dismiss()))
    page.get_by_role("button", name="Cancel run").click()
    assert dismissed == [f"Cancel run {run_id} of slow?"]
    assert primary.run(run_id)["cancel_requested"] is False

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel run").click()
    expect(page.locator("#messages")).to_contain_text(f"run {run_id}")
    # A POST of the dismissed click would have gone out before this one: there was none.
    assert len(cancel_posts) == 1, cancel_posts
    expect(page.locator("#run-state")).to_have_text("cancelled", timeout=30_000)
    expect(page.locator("#log")).to_have_attribute("data-complete", "true")
    expect(page.get_by_role("button", name="Cancel run")).to_have_count(0)
    run = primary.run(run_id)
    assert (run["state"], run["jobs"][0]["state"]) == ("cancelled", "cancelled")
    expect(page.locator("#log")).to_contain_text(f"=== run {run_id}: cancelled")


def test_the_runs_list_filters_by_pipeline_state_and_worker(
    page, login, primary, start_agent, shot
):
    from playwright.sync_api import expect

    start_agent("worker-a", tags="a")
    start_agent("worker-b", tags="b")
    primary.pipeline(pipeline_yaml("alpha", {"ok": ["true"]}, tags=("a",)))
    primary.pipeline(pipeline_yaml("beta", {"broken": ["echo oops; exit 3"]}, tags=("b",)))
    alpha = [primary.wait_run(primary.trigger("alpha"))["id"] for _ in range(2)]
    beta = primary.wait_run(primary.trigger("beta"))["id"]
    assert primary.run(beta)["state"] == "failed"
    login(page, "viewer")
    page.goto("/runs")
    rows = page.locator("#runs tr[data-run]")

    def shown() -> list[int]:
        return [int(r.get_attribute("data-run")) for r in rows.all()]

    expect(rows).to_have_count(3)
    assert shown() == [beta, alpha[1], alpha[0]]  # newest first
    expect(page.locator(f'tr[data-run="{beta}"] [data-state]')).to_have_text("failed")
    shot(page, "runs")

    for field, value, expected in [
        ("pipeline", "alpha", alpha[::-1]),
        ("state", "failed", [beta]),
        ("worker", "worker-b", [beta]),
        ("worker", "worker-a", alpha[::-1]),
    ]:
        page.goto("/runs")
        page.locator(f"#filter-{field}").select_option(value)
        page.get_by_role("button", name="Filter").click()
        expect(rows).to_have_count(len(expected))
        assert shown() == expected, (field, value)
        expect(page.locator(f"#filter-{field}")).to_have_value(value)

    page.goto("/runs?pipeline=alpha&state=failed")
    expect(page.locator("#runs")).to_contain_text("No runs.")
    page.goto("/runs?state=exploded")
    expect(page.locator("main")).to_contain_text("state: must be one of")


def test_a_viewer_sees_no_cancel_button_and_their_cancel_is_refused(
    new_page, login, primary, start_agent, session_post, csrf_of
):
    from playwright.sync_api import expect

    start_agent("builder-1")
    primary.pipeline(pipeline_yaml("slow", {"build": ["echo started", "sleep 300"]}))
    run_id = primary.trigger("slow")
    viewer = new_page()
    login(viewer, "viewer")
    viewer.goto(f"/runs/{run_id}")
    expect(viewer.locator("#log")).to_contain_text("started")
    expect(viewer.locator("#run-state")).to_have_text("running")
    controls = (
        "main button:not(#log-follow):not(#log-load-earlier):not(#log-search *),"
        " main form:not(#log-search)"
    )
    expect(viewer.locator(controls)).to_have_count(0)
    status, body = session_post(viewer, f"/runs/{run_id}/cancel", {"csrf_token": csrf_of(viewer)})
    assert (status, "only an admin may do this" in body) == (403, True)
    run = primary.run(run_id)
    assert (run["state"], run["cancel_requested"]) == ("running", False)
    # An admin may: and the agent then stops at once at the end, not after its job.
    primary.client.json("POST", f"/api/v1/runs/{run_id}/cancel")
    assert primary.wait_run(run_id)["state"] == "cancelled"


def test_the_primary_shuts_down_cleanly_while_a_page_follows_a_log(
    page, login, primary, start_agent
):
    """An open stream holds a public-port thread, which the server waits for: the stream ends
    when the primary stops, so SIGTERM ends it (not the SIGKILL of fleet's stop, later)."""
    from playwright.sync_api import expect

    start_agent("builder-1")
    primary.pipeline(pipeline_yaml("slow", {"build": ["echo started", "sleep 300"]}))
    run_id = primary.trigger("slow")
    login(page, "viewer")
    page.goto(f"/runs/{run_id}")
    expect(page.locator("#log")).to_contain_text("started")
    expect(page.locator("#log-status")).to_have_text("following the log as it grows")
    primary.stop()
    assert primary.proc.returncode == 0


def test_numbers_in_queries_must_be_ascii_digits(page, login, primary, session_get):
    # "²" passes str.isdigit() but not int(): it must be a 400, not a 500.
    login(page, "viewer")
    primary.pipeline("name: one\njobs:\n  - name: j\n    steps:\n      - echo hi\n")
    run_id = primary.trigger("one")
    for path, headers in [
        ("/runs/table?limit=%C2%B2", {}),
        (f"/runs/{run_id}/events?offset=%C2%B2", {}),
        (f"/runs/{run_id}/events", {"Last-Event-ID": "\u00b2".encode().decode("latin-1")}),
    ]:
        status, _, body = session_get(page, path, headers)
        assert status == 400, (path, status, body[:200])


@both_widths
def test_a_runs_artifacts_are_listed_and_downloaded_from_its_page(
    new_page, viewport, login, primary, start_agent, session_get
):
    from playwright.sync_api import expect

    start_agent("builder-1")
    text = pipeline_yaml("packs", {"pack": ["mkdir -p dist", "printf 'wheel' > dist/x.whl"]})
    primary.pipeline(text.replace("    steps:", "    artifacts: [dist/*.whl]\n    steps:"))
    run_id = primary.trigger("packs")
    assert primary.wait_run(run_id)["state"] == "success"
    page = new_page(viewport)
    login(page)
    page.goto(f"/runs/{run_id}")
    row = page.locator("tr[data-artifacts='pack']")
    expect(row).to_contain_text("dist/x.whl")
    link = row.get_by_role("link", name="pack-artifacts.tar")
    expect(link).to_be_visible()
    no_sideways_overflow(page)
    status, headers, body = session_get(page, link.get_attribute("href"))
    api = primary.client.request("GET", f"/api/v1/runs/{run_id}/jobs/pack/artifacts.tar")
    assert (status, body) == (200, api[2])
    assert headers["Content-Disposition"] == (
        f'attachment; filename="run-{run_id}-pack-artifacts.tar"'
    )
    # Each file listed is a link to that file alone, a download of exactly its bytes.
    one = row.get_by_role("link", name="dist/x.whl")
    status, headers, body = session_get(page, one.get_attribute("href"))
    assert (status, body) == (200, b"wheel")
    assert headers["Content-Disposition"] == "attachment; filename*=UTF-8''x.whl"
