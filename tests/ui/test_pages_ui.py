"""Every page at both widths (1366 px and a 390 px phone): nothing to pan sideways to, the
header's controls inside the window; a styled page for an unknown URL (JSON still for
the API), the favicon, the untagged pipeline's label, and a success message that goes."""

import datetime
import re

import pytest
from widths import DESKTOP, PHONE, both_widths, no_sideways_overflow

pytestmark = pytest.mark.e2e


def _pages(primary, run_id: int, worker_id: str) -> list[tuple[str, str]]:
    return [
        ("workers", "/workers"),
        ("settings", "/settings/worker"),
        ("settings-rotate", "/settings/worker/rotate"),
        ("worker-deregister", f"/workers/{worker_id}/deregister"),
        ("worker", f"/workers/{worker_id}"),
        ("pipelines", "/pipelines"),
        ("pipeline", "/pipelines/build"),
        ("pipeline-edit", "/pipelines/build/edit"),
        ("pipeline-new", "/pipelines/_new"),
        ("pipeline-clear-cache", "/pipelines/build/cache/clear"),
        ("pipeline-delete", "/pipelines/build/delete"),
        ("pipeline-file-delete", "/pipelines/build/files/conf/app.ini/delete"),
        ("runs", "/runs"),
        ("run", f"/runs/{run_id}"),
        ("not-found", "/no/such/page"),
    ]


def test_every_page_fits_the_window(new_page, login, primary, start_agent, shot):
    from playwright.sync_api import expect

    start_agent("a-worker-with-a-long-name-0123", tags="linux,arm64,gpu")
    primary.pipeline(
        "name: build\ntags: [linux]\njobs:\n  - name: compile-everything-at-once\n"
        "    steps: ['echo a-long-line-without-spaces-" + "x" * 300 + "']\n"
    )
    status, _, _ = primary.client.request(
        "PUT", "/api/v1/pipelines/build/files/conf/app.ini", b"[app]\n", "text/plain"
    )
    assert status == 200
    run_id = primary.wait_run(primary.trigger("build"))["id"]
    worker_id = primary.worker("a-worker-with-a-long-name-0123")["id"]
    for viewport in (DESKTOP, PHONE):
        width = "phone" if viewport == PHONE else "desktop"

        page = new_page(viewport)
        page.goto("/login")
        no_sideways_overflow(page)
        shot(page, f"login-{width}")
        login(page, "admin")
        for name, path in _pages(primary, run_id, worker_id):
            page.goto(path)
            expect(page.locator("main h1")).to_be_visible()
            if name == "run":
                expect(page.locator("#log")).to_have_attribute("data-complete", "true")
            no_sideways_overflow(page)
            # The header's controls are inside the window (not cut off or past the bar).
            for control in (
                page.get_by_role("link", name="Settings"),
                page.get_by_role("button", name="Log out"),
            ):
                box = control.bounding_box()
                assert box and box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"], (
                    name,
                    box,
                )
            if name == "workers":  # its actions within reach, not past the right edge
                lock = page.get_by_role("button", name="Lock a-worker-with-a-long-name-0123")
                box = lock.bounding_box()
                assert box["x"] + box["width"] <= viewport["width"], box
            shot(page, f"{name}-{width}")


@both_widths
def test_unknown_urls_get_the_styled_page_the_api_json_and_there_is_a_favicon(
    new_page, viewport, login, primary, session_get
):
    from playwright.sync_api import expect

    page = new_page(viewport)
    login(page, "viewer")
    response = page.goto("/no/such/page")
    assert response.status == 404
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    expect(page.locator("main")).to_contain_text("there is no page at /no/such/page")
    status, headers, body = session_get(page, "/api/v1/no-such-thing", {"Accept": "text/html"})
    assert status == 404 and headers["Content-Type"] == "application/json"
    assert b'"code":"not_found"' in body.replace(b" ", b"")
    status, headers, body = session_get(page, "/favicon.ico")
    assert status == 200 and headers["Content-Type"].startswith("image/svg+xml")
    assert body.startswith(b"<svg")
    icon = page.locator('link[rel="icon"]').get_attribute("href")
    assert session_get(page, icon)[2] == body


def test_untagged_pipelines_say_where_they_run_and_success_messages_go(
    page, login, primary, start_agent
):
    from playwright.sync_api import expect

    start_agent("plain")
    primary.pipeline("name: anywhere\njobs:\n  - name: a\n    steps: ['sleep 30']\n")
    login(page, "admin")
    page.goto("/pipelines")
    expect(page.locator('tr[data-pipeline="anywhere"] td').first).to_have_text(
        "untagged workers only"
    )
    page.goto("/pipelines/anywhere")
    expect(page.locator("main .facts")).to_contain_text("none: runs only on workers with no tags")
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page).to_have_url(re.compile(r"/runs/\d+$"))
    run_id = int(page.url.rsplit("/", 1)[1])
    expect(page.locator("#messages")).to_have_text(f"run {run_id} queued")
    # The run's state comes without a reload, and the message goes while the run runs on.
    expect(page.locator("#run-state")).to_have_text("running")
    expect(page.locator("#messages .flash")).to_have_count(0)
    assert primary.run(run_id)["state"] == "running"
    primary.client.json("POST", f"/api/v1/runs/{run_id}/cancel")


def test_runs_history_pages_dates_jump_and_queue_places(new_page, login, primary):
    from playwright.sync_api import expect

    primary.pipeline("name: waits\ntags: [nobody]\njobs:\n  - name: a\n    steps: ['true']\n")
    ids = [primary.trigger("waits") for _ in range(101)]  # nobody takes them: all queued
    for viewport in (DESKTOP, PHONE):
        page = new_page(viewport)
        login(page, "viewer")
        page.goto("/runs")
        rows = page.locator("#runs tr[data-run]")
        expect(rows).to_have_count(100)
        newest = page.locator(f'#runs tr[data-run="{ids[-1]}"]')
        expect(newest.locator("[data-queue]")).to_contain_text("101st in the queue")
        reason = primary.run(ids[-1])["reason"]
        assert reason and reason in newest.locator("[data-queue]").text_content()
        no_sideways_overflow(page)
        page.locator("#older-runs").click()
        expect(rows).to_have_count(1)
        expect(page.locator(f'#runs tr[data-run="{ids[0]}"] [data-queue]')).to_contain_text(
            "1st in the queue"
        )
        expect(page.locator("#older-runs")).to_have_count(0)
        page.get_by_role("link", name="← Newest runs").click()
        expect(rows).to_have_count(100)

        # Days in UTC: today has them all, tomorrow none.
        today = datetime.datetime.now(datetime.UTC).date()
        page.locator("#filter-from").fill(str(today + datetime.timedelta(days=1)))
        page.get_by_role("button", name="Filter").click()
        expect(page.locator("#runs")).to_contain_text("No runs.")
        page.goto(f"/runs?from={today}&until={today}")
        expect(rows).to_have_count(100)
        page.goto("/runs?from=2026-02-30")
        expect(page.locator("main")).to_contain_text("from: must be a day, YYYY-MM-DD")

        page.goto("/runs")
        page.get_by_label("Run #").fill(str(ids[41]))
        page.get_by_role("button", name="Go").click()
        expect(page).to_have_url(re.compile(rf"/runs/{ids[41]}$"))
        page.goto("/runs")
        page.get_by_label("Run #").fill("99999")
        page.get_by_role("button", name="Go").click()
        expect(page.get_by_role("heading", name="Not found")).to_be_visible()
        expect(page.locator("main")).to_contain_text("no run 99999")
        # Hovering a time shows it in local time and UTC.
        page.goto("/runs")
        title = page.locator("#runs time").first.get_attribute("title")
        assert title.endswith(" UTC)"), title


def _luminance(rgb: str) -> float:
    def channel(v: int) -> float:
        c = v / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (int(x) for x in re.findall(r"\d+", rgb)[:3])
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(a: str, b: str) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_dark_mode_focus_rings_and_signals_by_name(browser, primary, start_agent, users):
    from playwright.sync_api import expect

    start_agent("sig-host")
    primary.pipeline("name: sig\njobs:\n  - name: killed\n    steps: ['kill -TERM $$']\n")
    run_id = primary.wait_run(primary.trigger("sig"))["id"]
    for viewport in (DESKTOP, PHONE):
        for scheme in ("light", "dark"):
            context = browser.new_context(
                viewport=viewport, base_url=primary.url, color_scheme=scheme
            )
            page = context.new_page()
            page.goto("/login")
            page.get_by_label("Name").fill(users["viewer"].name)
            page.get_by_label("Password").fill(users["viewer"].password)
            page.get_by_role("button", name="Log in").click()
            page.goto(f"/runs/{run_id}")
            expect(page.locator("#log")).to_have_attribute("data-complete", "true")
            background = page.evaluate("getComputedStyle(document.documentElement).backgroundColor")
            text = page.evaluate("getComputedStyle(document.body).color")
            assert (_luminance(background) < 0.1) == (scheme == "dark"), (scheme, background)
            assert contrast(background, text) >= 4.5
            # Focus rings: at least 3:1 against what is behind them, on the page and the header.
            page.keyboard.press("Tab")  # the skip link, then the brand in the header
            page.keyboard.press("Tab")
            ring = page.evaluate("getComputedStyle(document.activeElement).outlineColor")
            header = page.evaluate(
                "getComputedStyle(document.querySelector('.top')).backgroundColor"
            )
            assert contrast(ring, header) >= 3, (scheme, ring, header)
            page.locator("#log").focus()  # its ring is inside the box, against the log's dark
            ring, inside, offset = page.evaluate(
                "(s => [s.outlineColor, s.backgroundColor, s.outlineOffset])"
                "(getComputedStyle(document.activeElement))"
            )
            assert offset.startswith("-") and contrast(ring, inside) >= 3, (scheme, ring, inside)
            # A job a signal ended: its name, in the table and the log.
            expect(page.locator('tr[data-job="killed"] [data-exit]')).to_have_text("SIGTERM")
            expect(page.locator("#log")).to_contain_text(
                "=== job killed: failed, killed by SIGTERM"
            )
            no_sideways_overflow(page)
            context.close()


@both_widths
def test_runs_and_workers_link_to_each_other_with_what_each_ran_and_how_long(
    new_page, viewport, login, primary, start_agent
):
    from playwright.sync_api import expect

    page = new_page(viewport)
    start_agent("linked-host")
    primary.pipeline("name: quick\njobs:\n  - name: a\n    steps: ['sleep 1']\n")
    run_id = primary.wait_run(primary.trigger("quick"))["id"]
    login(page, "viewer")
    page.goto("/runs")
    page.locator(f'#runs tr[data-run="{run_id}"]').get_by_role("link", name="linked-host").click()
    expect(page.get_by_role("heading", name="Worker linked-host")).to_be_visible()
    expect(page.locator("#current-runs")).to_have_text("Nothing.")
    row = page.locator(f'tr[data-attempt-of="{run_id}"]')
    expect(row.locator(".badge")).to_have_text("success")
    took = row.locator("td").nth(3).text_content()
    assert re.fullmatch(r"\d+\.\d s", took) and float(took[:-2]) >= 1, took
    row.get_by_role("link", name=f"#{run_id}").click()
    expect(page).to_have_url(re.compile(rf"/runs/{run_id}$"))
    expect(page.locator("#run-in-all")).to_have_text(re.compile(r"^\d+\.\d s$"))
    expect(page.locator('#run-history tr[data-attempt="1"] [data-took]')).to_have_text(
        re.compile(r"^\d+\.\d s$")
    )
    page.locator("#run-worker").get_by_role("link", name="linked-host").click()
    expect(page.get_by_role("heading", name="Worker linked-host")).to_be_visible()
    page.get_by_role("link", name="All its runs").click()
    expect(page.locator(f'#runs tr[data-run="{run_id}"]')).to_have_count(1)
    page.goto("/workers")
    page.get_by_role("link", name="linked-host").click()
    expect(page.get_by_role("heading", name="Worker linked-host")).to_be_visible()


@both_widths
def test_a_banner_says_when_the_primary_stops_answering(new_page, viewport, login, primary):
    from playwright.sync_api import expect

    primary.pipeline("name: waits\ntags: [nobody]\njobs:\n  - name: a\n    steps: ['true']\n")
    run_id = primary.trigger("waits")
    workers_page, run_page = new_page(viewport), new_page(viewport)
    for page, path in ((workers_page, "/workers"), (run_page, f"/runs/{run_id}")):
        login(page, "viewer")
        page.goto(path)
        expect(page.locator("body")).not_to_have_class(re.compile(r"\bstale\b"))
    expect(run_page.locator("#log-status")).to_have_text("waiting for a worker")
    primary.stop()
    for page in (workers_page, run_page):
        expect(page.locator("body")).to_have_class(re.compile(r"\bstale\b"), timeout=30_000)
        banner = page.evaluate(
            "getComputedStyle(document.querySelector('main'), '::before').content"
        )
        assert "does not answer" in banner
    expect(run_page.locator("#log-status")).to_contain_text("the primary does not answer")
