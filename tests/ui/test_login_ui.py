"""Login, logout, the session cookie and CSRF, in a real browser against a real primary."""

import re
import sqlite3
import subprocess

import pytest
from fleet import BIN

pytestmark = pytest.mark.e2e


def test_a_page_asks_for_a_login_then_opens_and_logout_ends_the_session(page, users, shot):
    from playwright.sync_api import expect

    page.goto("/workers")
    expect(page).to_have_url(re.compile(r"/login\?next=/workers$"))
    expect(page.get_by_role("heading", name="Log in to cifleet")).to_be_visible()
    shot(page, "login")

    page.get_by_label("Name").fill("ada")
    page.get_by_label("Password").fill(users["admin"].password)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/workers$"))  # back where they were going
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Workers")).to_have_attribute("aria-current", "page")
    expect(nav.get_by_role("link", name="Settings")).to_be_visible()

    (cookie,) = [c for c in page.context.cookies() if c["name"] == "cifleet_session"]
    assert (cookie["secure"], cookie["httpOnly"], cookie["sameSite"]) == (True, True, "Lax")

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_text("You are logged out.")).to_be_visible()
    page.goto("/settings/worker")
    expect(page).to_have_url(re.compile(r"/login\?next=/settings/worker$"))


def test_a_wrong_password_and_an_unknown_name_get_the_same_refusal(page, users):
    from playwright.sync_api import expect

    for name, password in [("ada", "not-the-password"), ("nobody", users["admin"].password)]:
        page.goto("/login")
        page.get_by_label("Name").fill(name)
        page.get_by_label("Password").fill(password)
        with page.expect_response(lambda r: r.url.endswith("/login")) as answer:
            page.get_by_role("button", name="Log in").click()
        assert answer.value.status == 401
        expect(page.get_by_role("alert")).to_have_text("wrong name or password")
        expect(page.get_by_role("button", name="Log out")).to_have_count(0)
    page.goto("/workers")
    expect(page).to_have_url(re.compile(r"/login\?next=/workers$"))


def test_a_login_goes_only_to_a_path_on_this_site(page, users):
    from playwright.sync_api import expect

    page.goto("/login?next=//example.com/steal")
    page.get_by_label("Name").fill("vic")
    page.get_by_label("Password").fill(users["viewer"].password)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"^https://127\.0\.0\.1:\d+/workers$"))


@pytest.mark.parametrize(
    "target",
    ["//example.com/x", "/%09/example.com/x", "/%5Cexample.com/x", "/%0D%0Ax", "https://e.com/"],
)
def test_a_logged_in_user_is_never_sent_off_site(page, login, session_get, target):
    # Browsers drop a tab from a URL, so "/<TAB>/example.com" would become "//example.com".
    login(page, "viewer")
    status, headers, _ = session_get(page, f"/login?next={target}")
    assert (status, headers["Location"]) == (302, "/workers")


def test_posts_without_the_csrf_token_are_refused(page, login, session_post, csrf_of):
    from playwright.sync_api import expect

    page.goto("/login")
    status, body = session_post(page, "/login", {"name": "ada", "password": "ada-password-0123"})
    assert status == 403 and "CSRF token missing or wrong" in body

    login(page, "admin")
    token = csrf_of(page)
    assert session_post(page, "/logout", {})[0] == 403
    assert session_post(page, "/logout", {"csrf_token": token[:-1] + "x"})[0] == 403
    page.reload()
    expect(page.get_by_role("button", name="Log out")).to_be_visible()  # still logged in
    assert session_post(page, "/logout", {"csrf_token": token})[0] == 303
    # The Workers page refreshes itself; finding its session ended, it goes to the login
    # (a page.reload() here would race the page's own).
    expect(page).to_have_url(re.compile(r"/login\?next=/workers$"))
    expect(page.get_by_role("heading", name="Log in to cifleet")).to_be_visible()


def test_failed_logins_are_limited_per_address(page, users, session_post, csrf_of):
    page.goto("/login")
    token = csrf_of(page)
    wrong = {"csrf_token": token, "name": "ada", "password": "guess-guess-guess"}
    for _ in range(10):  # the default limit: 10 failures in 300 s
        assert session_post(page, "/login", wrong)[0] == 401
    right = {**wrong, "password": users["admin"].password}
    status, body = session_post(page, "/login", right)
    assert status == 429 and "too many failed logins" in body


def test_a_session_outlives_a_restart_and_ends_when_the_user_is_disabled(page, primary, login):
    from playwright.sync_api import expect

    login(page, "viewer")
    primary.stop()
    primary.start()
    page.goto("/workers")  # the signing key is in the vault: the cookie is still good
    expect(page.get_by_role("heading", name="Workers")).to_be_visible()
    expect(page.locator(".who")).to_contain_text("vic")

    disabled = subprocess.run(
        [str(BIN / "cifleet-primary"), "user", "disable", "vic"]
        + ["--data-dir", str(primary.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert disabled.returncode == 0, disabled.stderr
    # The page's next refresh is refused, and it goes to the login by itself.
    expect(page).to_have_url(re.compile(r"/login\?next=/workers$"))


def test_a_copied_cookie_of_a_logged_out_session_stays_refused_after_a_restart(
    new_page, primary, login
):
    from playwright.sync_api import expect

    page = new_page()
    login(page, "admin")
    copied = [c for c in page.context.cookies() if c["name"] == "cifleet_session"]
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_text("You are logged out.")).to_be_visible()
    primary.stop()
    primary.start()  # the ended session is in the store, not only in memory

    thief = new_page()
    thief.context.add_cookies(copied)
    thief.goto("/workers")
    expect(thief).to_have_url(re.compile(r"/login\?next=/workers$"))
    with sqlite3.connect(primary.data_dir / "cifleet.db") as db:
        assert db.execute("SELECT COUNT(*) FROM ui_sessions").fetchone() == (0,)
