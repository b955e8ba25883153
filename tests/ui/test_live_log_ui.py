"""The run page's log at scale and as a terminal shows it: a 20 MB log arriving live keeps
a bounded DOM (numbered lines, "Load earlier" for what left the top) and the page answers
scripts meanwhile; carriage-return progress lines; line numbers that link."""

import json
import re
import time

import pytest
from fleet import wait_file_step, wait_for
from widths import DESKTOP, PHONE, both_widths, no_sideways_overflow

pytestmark = pytest.mark.e2e

MAX_LINES = 5000  # run_log.js
# 20 batches of 10,000 numbered lines of 100 bytes: 20 MB.
BIG_STEP = (
    "for b in $(seq 0 19); do seq -f \"line %07g $(printf 'x%.0s' $(seq 1 86))\""
    " $((b * 10000 + 1)) $((b * 10000 + 10000)); sleep 0.2; done"
)


@both_widths
def test_a_20_mb_live_log_keeps_a_bounded_dom_and_the_page_answers(
    new_page, viewport, login, primary, start_agent, tmp_path, capsys
):
    from playwright.sync_api import expect

    start_agent("big-host")
    go = tmp_path / "go"
    primary.pipeline(
        f"name: big\njobs:\n  - name: spew\n    steps:\n      - {json.dumps(wait_file_step(go))}\n"
        f"      - {json.dumps(BIG_STEP)}\n"
    )
    run_id = primary.trigger("big")
    page = new_page(viewport)
    login(page, "viewer")
    page.goto(f"/runs/{run_id}")
    log = page.locator("#log")
    expect(page.locator("#run-state")).to_have_text("running")
    go.touch()
    wait_for(
        lambda: (
            "line 00"
            in (
                log.get_attribute("data-state")
                and page.evaluate(
                    "document.getElementById('log').lastElementChild?.textContent || ''"
                )
            )
        ),
        60,
        "output",
    )

    # While it streams: the page answers a script call, and never holds more lines.
    latencies, most = [], 0
    while primary.run(run_id)["state"] == "running" or log.get_attribute("data-complete") is None:
        started = time.monotonic()
        count = page.evaluate("document.getElementById('log').childElementCount")
        latencies.append(time.monotonic() - started)
        most = max(most, count)
        assert count <= MAX_LINES
        if len(latencies) > 2000:
            break
    expect(log).to_have_attribute("data-complete", "true", timeout=60_000)
    with capsys.disabled():
        print(
            f"\n20 MB live log: {len(latencies)} script calls while it came, slowest"
            f" {max(latencies) * 1000:.0f} ms, median"
            f" {sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms; at most {most} lines"
        )

    _, _, body = primary.client.request("GET", f"/api/v1/runs/{run_id}/log")
    assert len(body) > 20_000_000
    stored = body.decode().split("\n")[:-1]
    lines = page.locator("#log > .line")
    assert lines.count() == MAX_LINES
    last = lines.nth(MAX_LINES - 1)
    assert last.get_attribute("data-n") == str(len(stored))  # numbered from the log's start
    assert last.text_content() == stored[-1] + "\n"
    first = lines.nth(0)
    first_n = int(first.get_attribute("data-n"))
    assert first.text_content() == stored[first_n - 1] + "\n"
    # The shown lines are the log's last ones, each once.
    shown = page.evaluate(
        "Array.from(document.querySelectorAll('#log > .line'), l => l.textContent).join('')"
    )
    assert shown == "\n".join(stored[first_n - 1 :]) + "\n"

    # Load earlier: the lines just before, numbered and exact, at the top.
    expect(page.locator("#log-earlier")).to_contain_text(f"{first_n - 1} earlier lines")
    page.get_by_role("button", name="Load earlier").click()
    expect(lines.first).not_to_have_attribute("data-n", str(first_n))
    new_first = int(lines.first.get_attribute("data-n"))
    assert new_first < first_n
    shown = page.evaluate(
        "Array.from(document.querySelectorAll('#log > .line'), l => l.textContent).join('')"
    )
    assert shown == "\n".join(stored[new_first - 1 :]) + "\n"
    no_sideways_overflow(page)


def test_progress_lines_colours_and_line_links(new_page, login, primary, start_agent):
    from playwright.sync_api import expect

    start_agent("tty-host")
    steps = [
        r"printf 'downloading  10%%\rdownloading  50%%\rdownloading 100%%\n'",
        r"printf 'a\033[4;44munderlined on blue\033[0m b \033[38;5;208morange\033[0m\r\n'",
        "echo after",
    ]
    lines = "\n".join(f"      - {json.dumps(s)}" for s in steps)
    primary.pipeline(
        f"name: tty\njobs:\n  - name: draw\n    steps:\n{lines}\n"
        "  - name: breaks\n    needs: [draw]\n    steps: ['echo broken; exit 3']\n"
    )
    run_id = primary.wait_run(primary.trigger("tty"))["id"]
    for viewport in (DESKTOP, PHONE):
        page = new_page(viewport)
        login(page, "viewer")
        page.goto(f"/runs/{run_id}")
        log = page.locator("#log")
        expect(log).to_have_attribute("data-complete", "true")
        no_sideways_overflow(page)
        progress = log.locator(".line", has_text="downloading")
        expect(progress).to_have_text("downloading 100%\n")  # what a terminal shows at the end
        styled = log.locator("span.ansi-underline.ansi-bg-44")
        expect(styled).to_have_text("underlined on blue")
        orange = log.locator(".line span", has_text="orange")
        assert orange.evaluate("el => getComputedStyle(el).color") == "rgb(255, 135, 0)"
        expect(page.locator("#log-earlier")).to_be_hidden()  # all of it is shown

        # The line number links to the line; opened with the link, the line is marked.
        after = log.locator(".line", has_text="after")
        number = after.get_attribute("data-n")
        after.scroll_into_view_if_needed()
        box = after.bounding_box()
        page.mouse.click(box["x"] + 4, box["y"] + box["height"] / 2)
        expect(page).to_have_url(re.compile(rf"/runs/{run_id}#L{number}$"))
        expect(after).to_have_class(re.compile(r"\btarget\b"))
        other = new_page(viewport)
        login(other, "viewer")
        other.goto(f"/runs/{run_id}#L{number}")
        expect(other.locator(f"#L{number}")).to_have_class(re.compile(r"\btarget\b"))
        # The title says the state.
        expect(other).to_have_title(re.compile(r"^failed · Run "))

        # Jump to the failed job: its header is marked; a job's section folds and opens.
        jump = page.get_by_role("link", name="Jump to the failed job (breaks)")
        jump.click()
        header = log.locator(".line.section", has_text="=== job breaks")
        expect(header).to_have_class(re.compile(r"\btarget\b"))
        assert page.url.endswith(f"#{header.get_attribute('id')}")
        draw = log.locator(".line.section", has_text="=== job draw")
        body_lines = log.locator(".line", has_text="downloading")
        expect(body_lines).to_be_visible()
        draw.press("Enter")
        expect(draw).to_have_attribute("aria-expanded", "false")
        expect(body_lines).to_be_hidden()
        expect(log.locator(".line", has_text="=== job draw: success")).to_be_visible()
        draw.press("Enter")
        expect(body_lines).to_be_visible()


@both_widths
def test_search_finds_lines_in_the_whole_log_and_opens_one_not_shown(
    new_page, viewport, login, primary, start_agent
):
    from playwright.sync_api import expect

    start_agent("search-host")
    step = "seq -f 'row %g' 1 12000; printf 'needle \\033[31mred\\033[0m here\\n'; seq 1 3"
    primary.pipeline(f"name: hay\njobs:\n  - name: stack\n    steps:\n      - {json.dumps(step)}\n")
    run_id = primary.wait_run(primary.trigger("hay"))["id"]
    page = new_page(viewport)
    login(page, "viewer")
    page.goto(f"/runs/{run_id}")
    log = page.locator("#log")
    expect(log).to_have_attribute("data-complete", "true")
    _, _, body = primary.client.request("GET", f"/api/v1/runs/{run_id}/log")
    stored = body.decode().split("\n")
    row_7 = stored.index("row 7") + 1  # its line number
    assert log.locator(f"#L{row_7}").count() == 0  # left the page: 5,000 lines at most

    page.get_by_label("Search the whole log").fill("NEEDLE red")
    page.get_by_role("button", name="Search").click()
    results = page.locator("#log-search-results li")
    expect(results).to_have_count(1)
    needle = stored.index("needle \x1b[31mred\x1b[0m here") + 1
    expect(results).to_have_text(f"line {needle}: needle red here")
    page.get_by_label("Search the whole log").fill("row 7")
    page.get_by_role("button", name="Search").click()
    expect(results.first).to_have_text(f"line {row_7}: row 7")
    results.first.get_by_role("link").click()
    line = log.locator(f"#L{row_7}")
    expect(line).to_have_class(re.compile(r"\btarget\b"))
    assert line.text_content() == "row 7\n"
    expect(log.locator(f"#L{row_7 + 1}")).to_have_text("row 8\n")
    assert page.url.endswith(f"#L{row_7}")
    no_sideways_overflow(page)
    # Bad queries are a 400.
    page.get_by_label("Search the whole log").evaluate("el => el.removeAttribute('maxlength')")
    page.get_by_label("Search the whole log").fill("x" * 201)
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#log-search-results")).to_have_text("q: search for 1 to 200 characters")


def test_lines_shown_from_the_middle_of_a_log_keep_the_colours_set_before_them(
    new_page, login, primary, start_agent
):
    """A long log's tail, "Load earlier" and a search result opened far up all start in the
    colours the log set before them (the primary reads them back: X-Log-Ansi)."""
    from playwright.sync_api import expect

    start_agent("colour-host")
    pad = "y" * 88
    step = (
        f"printf '\\033[1;31m'; seq -f 'line %05g {pad}' 1 2999; printf '\\033[4m';"
        f" seq -f 'line %05g {pad}' 3000 5999; printf '\\033[22;34m';"
        f" seq -f 'line %05g {pad}' 6000 18000; printf '\\033[0mplain\\n'"
    )
    primary.pipeline(f"name: hue\njobs:\n  - name: paint\n    steps:\n      - {json.dumps(step)}\n")
    run_id = primary.wait_run(primary.trigger("hue"))["id"]
    _, _, body = primary.client.request("GET", f"/api/v1/runs/{run_id}/log")
    stored = body.decode().split("\n")
    number = {f"line {n:05d}": i + 1 for i, text in enumerate(stored) for n in [_n(text)] if n}
    page = new_page(DESKTOP)
    login(page, "viewer")
    page.goto(f"/runs/{run_id}")
    log = page.locator("#log")
    expect(log).to_have_attribute("data-complete", "true")

    def classes(n: int) -> str:
        line = log.locator(f"#L{number[f'line {n:05d}']}")
        return line.evaluate("el => el.querySelector('span')?.className || ''")

    # The page opened more than its tail's 1 MiB past the log's last colour change.
    assert int(log.get_attribute("data-first-line")) > number["line 06000"]
    first_n = int(log.locator(".line").first.get_attribute("data-n"))
    assert classes(_n(stored[first_n - 1])) == "ansi-fg-34 ansi-underline"
    expect(log.locator(".line", has_text="plain")).to_have_text("plain\n")
    assert log.locator(".line", has_text="plain").locator("span").count() == 0

    while int(log.locator(".line").first.get_attribute("data-n")) > number["line 05990"]:
        first = log.locator(".line").first.get_attribute("data-n")
        page.get_by_role("button", name="Load earlier").click()
        expect(log.locator(".line").first).not_to_have_attribute("data-n", first)
    assert classes(5990) == "ansi-fg-31 ansi-bold ansi-underline"
    assert classes(6000) == "ansi-fg-34 ansi-underline"

    page.get_by_label("Search the whole log").fill("line 02000")
    page.get_by_role("button", name="Search").click()
    page.locator("#log-search-results li").first.get_by_role("link").click()
    target = log.locator(f"#L{number['line 02000']}")
    expect(target).to_have_class(re.compile(r"\btarget\b"))
    assert classes(2000) == "ansi-fg-31 ansi-bold"
    expect(log.locator(f"#L{number['line 03000']}")).to_be_attached()
    assert classes(3000) == "ansi-fg-31 ansi-bold ansi-underline"


def _n(text: str) -> int | None:
    """The number of a `line NNNNN ...` line of the log (escape codes before it allowed)."""
    match = re.search(r"line (\d{5}) ", text)
    return int(match.group(1)) if match else None
