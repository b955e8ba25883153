"""The Workers page in a real browser, with real agents: states, the table updating itself,
and the admin actions (lock, drain, tags, de-register)."""

import pytest
from fleet import AS_NOBODY, AgentPeer, put_in_conflict, register_agent, wait_for
from widths import both_widths, no_sideways_overflow

pytestmark = pytest.mark.e2e

PIPELINE = "name: build\ntags: [linux]\njobs:\n  - name: compile\n    steps: ['true']\n"


def _row(page, name: str):
    return page.locator(f'tr[data-worker="{name}"]')


def test_the_table_shows_the_agent_and_follows_drain_and_lock_without_a_reload(
    page, login, primary, start_agent, fleet_root, shot
):
    from playwright.sync_api import expect

    start_agent("builder-1", tags="linux,docker", slots=2)
    assert register_agent(primary, fleet_root, "builder-2", "linux,gpu").returncode == 0
    primary.pipeline(PIPELINE)
    primary.wait_run(primary.trigger("build"))  # builder-1 becomes the pipeline's home
    login(page, "admin")
    page.goto("/workers")
    row = _row(page, "builder-1")
    expect(row.locator("[data-state]")).to_have_text("active")
    cells = row.locator("td")
    expect(cells.nth(1)).to_have_text("docker linux")
    expect(cells.nth(2)).to_contain_text("CPU")  # the load the agent reported
    expect(cells.nth(3)).to_have_text("0 / 2")
    expect(cells.nth(4)).to_have_text(primary.worker("builder-1")["version"])
    expect(cells.nth(6)).to_have_text("build")
    expect(_row(page, "builder-2").locator("[data-state]")).to_have_text("inactive")
    shot(page, "workers")

    page.evaluate("window.notReloaded = true")
    row.get_by_role("button", name="Drain builder-1").click()
    expect(row.locator("[data-state]")).to_have_text("draining")
    expect(page.locator("#messages")).to_have_text("builder-1: draining")
    assert primary.worker("builder-1")["draining"] is True

    # A change made elsewhere (the admin API) appears by itself.
    primary.client.json("POST", "/api/v1/workers/builder-1/flood")
    expect(row.locator("[data-state]")).to_have_text("active")
    expect(row.get_by_role("button", name="Drain builder-1")).to_be_visible()

    row.get_by_role("button", name="Lock builder-1").click()
    expect(row.locator("[data-state]")).to_have_text("locked")
    assert primary.worker("builder-1")["locked"] is True
    row.get_by_role("button", name="Unlock builder-1").click()
    expect(row.locator("[data-state]")).to_have_text("active")
    assert page.evaluate("window.notReloaded") is True  # all of it without a page load


def test_inactive_and_version_mismatch_badges(page, login, primary, fleet_root):
    from playwright.sync_api import expect

    registered = register_agent(primary, fleet_root, "idle-1")  # registered, never started
    assert registered.returncode == 0, registered.stderr
    login(page, "viewer")
    page.goto("/workers")
    state = _row(page, "idle-1").locator("[data-state]")
    expect(state).to_have_text("inactive")

    peer = AgentPeer.of_home(primary, fleet_root / "idle-1")

    def poll_as_an_old_agent_and_look() -> bool:
        status, _ = peer.call(
            "POST", "/agent/v1/poll", {"wait": False, "runs": [], "version": "0.0.1", "slots": 1}
        )
        assert status == 200
        page.reload()
        return state.inner_text() == "version mismatch"

    wait_for(poll_as_an_old_agent_and_look, 30, "the version mismatch badge")
    expect(_row(page, "idle-1").locator("td").nth(4)).to_have_text("0.0.1")


def test_tags_are_edited_in_place_and_bad_ones_are_refused(page, login, primary, start_agent):
    from playwright.sync_api import expect

    start_agent("builder-1", tags="linux")
    login(page, "admin")
    page.goto("/workers")
    row = _row(page, "builder-1")
    row.get_by_text("Edit tags").click()
    field = row.get_by_label("Tags of builder-1")
    field.fill("linux, gpu  arm64")
    field.press("Enter")
    expect(row.locator("td").nth(1)).to_have_text("arm64 gpu linux")
    expect(page.locator("#messages")).to_have_text("builder-1: tags arm64, gpu, linux")
    assert primary.worker("builder-1")["tags"] == ["arm64", "gpu", "linux"]

    row.get_by_text("Edit tags").click()
    row.get_by_label("Tags of builder-1").fill("gpu, no spaces!")
    row.get_by_role("button", name="Save tags").click()
    expect(page.locator("#messages .flash-error")).to_have_text(
        "tags: \"spaces!\" is not a name (letters, digits, '.', '_', '-')"
    )
    assert primary.worker("builder-1")["tags"] == ["arm64", "gpu", "linux"]


def test_deregister_asks_first_then_removes_the_worker(page, login, primary, start_agent):
    from playwright.sync_api import expect

    agent = start_agent("builder-1")
    login(page, "admin")
    page.goto("/workers")
    _row(page, "builder-1").get_by_role("link", name="De-register builder-1").click()
    expect(page.get_by_role("heading", name="De-register builder-1?")).to_be_visible()
    page.get_by_role("link", name="Cancel").click()
    expect(_row(page, "builder-1")).to_be_visible()
    assert primary.worker("builder-1") is not None  # cancelling changed nothing

    _row(page, "builder-1").get_by_role("link", name="De-register builder-1").click()
    page.get_by_role("button", name="De-register builder-1").click()
    expect(page.locator("#messages")).to_have_text("builder-1 was de-registered")
    expect(_row(page, "builder-1")).to_have_count(0)
    assert primary.worker("builder-1") is None
    # The agent is refused on its next call, wipes its identity and ends.
    wait_for(lambda: agent.proc.poll() is not None, 60, "the removed agent to exit")
    assert not (agent.home / "worker.key").exists()


def test_a_viewer_sees_no_admin_controls_and_their_admin_posts_are_refused(
    new_page, login, primary, start_agent, session_post, csrf_of
):
    from playwright.sync_api import expect

    start_agent("builder-1")
    worker_id = primary.worker("builder-1")["id"]
    viewer = new_page()
    login(viewer, "viewer")
    viewer.goto("/workers")
    expect(_row(viewer, "builder-1").locator("[data-state]")).to_have_text("active")
    # No controls; the one link is the worker's own page.
    expect(viewer.locator("#workers button, #workers form")).to_have_count(0)
    links = viewer.locator("#workers a")
    expect(links).to_have_count(1)
    assert links.get_attribute("href") == f"/workers/{worker_id}"
    expect(viewer.get_by_role("columnheader", name="Actions")).to_have_count(0)
    expect(viewer.get_by_role("link", name="Settings")).to_have_count(0)
    expect(viewer.get_by_role("link", name="Add a worker")).to_have_count(0)

    token = csrf_of(viewer)
    for path in [
        f"/workers/{worker_id}/flags/drain",
        f"/workers/{worker_id}/root-jobs/allow",
        f"/workers/{worker_id}/tags",
        f"/workers/{worker_id}/deregister",
        "/settings/worker/secret",
        "/settings/worker/rotate",
    ]:
        status, body = session_post(viewer, path, {"csrf_token": token, "tags": "x"})
        assert (status, "only an admin may do this" in body) == (403, True), path
    viewer.goto("/settings/worker")
    expect(viewer.get_by_role("heading", name="Not allowed")).to_be_visible()

    # An admin's POST is refused too when it lacks the session's CSRF token.
    admin = new_page()
    login(admin, "admin")
    for form in [{}, {"csrf_token": token}]:  # none, and the viewer's
        status, body = session_post(admin, f"/workers/{worker_id}/flags/drain", form)
        assert status == 403 and "CSRF" in body
    after = primary.worker("builder-1")
    assert (after["draining"], after["tags"], after["state"]) == (False, [], "active")
    assert after["root_jobs"] is False


def test_who_jobs_run_as_is_shown_and_root_jobs_are_allowed_in_place(
    page, login, primary, start_agent
):
    from playwright.sync_api import expect

    start_agent("builder-1")
    login(page, "admin")
    page.goto("/workers")
    row = _row(page, "builder-1")
    identity = row.locator("[data-identity]")
    expect(identity).to_have_text("each pipeline's jobs run as a uid of their own (65536-66535)")
    row.get_by_role("button", name="Allow root jobs on builder-1").click()
    expect(page.locator("#messages")).to_have_text("builder-1: root jobs allowed")
    expect(identity).to_contain_text("root jobs allowed")
    assert primary.worker("builder-1")["root_jobs"] is True
    row.get_by_role("button", name="Deny root jobs on builder-1").click()
    expect(page.locator("#messages")).to_have_text("builder-1: root jobs not allowed")
    assert primary.worker("builder-1")["root_jobs"] is False


WARNING_RED = "rgb(164, 14, 38)"  # .warning in ui.css, at desktop width


def test_an_agent_that_cannot_switch_users_is_flagged_on_both_worker_pages(
    page, login, start_agent
):
    """An agent started as a plain user (fleet.AS_NOBODY) runs jobs as itself: both the
    Workers page and the worker's own page say so, in red; a root agent's line is plain."""
    from playwright.sync_api import expect

    start_agent("builder-1")
    start_agent("plain-user", prefix=AS_NOBODY)  # active: it reported who its jobs run as
    login(page, "viewer")
    page.goto("/workers")
    shared = _row(page, "plain-user").locator("[data-identity]")
    expect(shared).to_have_text("jobs share the agent's identity")
    expect(shared).to_have_class("warning")
    expect(shared).to_have_css("color", WARNING_RED)
    rooted = _row(page, "builder-1").locator("[data-identity]")
    expect(rooted).to_have_text("each pipeline's jobs run as a uid of their own (65536-66535)")
    expect(rooted).not_to_have_class("warning")
    expect(rooted).not_to_have_css("color", WARNING_RED)

    _row(page, "plain-user").get_by_role("link", name="plain-user").click()
    expect(page.get_by_role("heading", name="Worker plain-user")).to_be_visible()
    own = page.locator("dd[data-identity]")
    expect(own).to_have_text("jobs share the agent's identity")
    expect(own).to_have_class("warning")
    expect(own).to_have_css("color", WARNING_RED)


def test_a_worker_in_credentials_conflict_shows_it_and_why(page, login, primary, fleet_root):
    """A second renewal from a superseded certificate (a copied key): the open Workers page
    turns the worker's badge red by itself and says why and what to do; so does its page."""
    from playwright.sync_api import expect

    assert register_agent(primary, fleet_root, "twice").returncode == 0
    login(page, "admin")
    page.goto("/workers")
    row = _row(page, "twice")
    expect(row.locator("[data-state]")).to_have_text("inactive")
    expect(row.locator("[data-conflict]")).to_have_count(0)

    reason = put_in_conflict(primary, fleet_root / "twice", fleet_root / "copy")
    assert reason.startswith("a second renewal came"), reason
    state = row.locator("[data-state]")
    expect(state).to_have_text("credentials in conflict")  # the table refreshes itself
    expect(state).to_have_class("badge badge-credentials-in-conflict")
    expect(row.locator("[data-conflict]")).to_have_text(
        f"{reason}; an admin removes it and registers its host again"
    )
    expect(row.locator("[data-conflict]")).to_have_class("warning")  # red, not grey
    expect(row.get_by_role("link", name="De-register twice")).to_be_visible()  # the way out

    row.get_by_role("link", name="twice", exact=True).click()
    expect(page.locator("#worker-state")).to_have_text("credentials in conflict")
    expect(page.locator(".flash-error")).to_have_text(reason)


@both_widths
def test_a_workers_page_shows_its_state_changes_and_who_made_them(
    new_page, viewport, login, primary, start_agent
):
    from playwright.sync_api import expect

    start_agent("tracked")
    wait_for(
        lambda: primary.client.json("GET", "/api/v1/workers/tracked/history")["history"],
        30,
        "its first state recorded",
    )
    page = new_page(viewport)
    login(page, "admin")
    page.goto("/workers")
    _row(page, "tracked").get_by_role("button", name="Lock tracked").click()
    expect(_row(page, "tracked").locator("[data-state]")).to_have_text("locked")
    page.get_by_role("link", name="tracked", exact=True).click()
    changes = page.locator("tr[data-state-change]")
    newest = changes.first
    expect(newest).to_have_attribute("data-state-change", "locked")
    expect(newest.locator("td").nth(2)).to_have_text("user ada")  # who locked it
    expect(changes.last).to_have_attribute("data-state-change", "active")
    no_sideways_overflow(page)
