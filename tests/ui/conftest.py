"""Browser tests of the web UI: a real primary (fixture `primary`, tests/conftest.py), users
made with `cifleet-primary user create`, and Playwright driving the distribution's Chromium
(/usr/bin/chromium; `playwright install` is never run).

TLS is verified, not ignored: Chromium is started with the SHA-256 of the test primary's
server public key in --ignore-certificate-errors-spki-list, so it accepts exactly that
server key (the primary's own CA is not in the system store) and fails on any other.

Screenshots: every test leaves one of its final page in its tmp folder (screenshots/);
`shot(page, name)` takes one on purpose, and with CIFLEET_UI_SCREENSHOTS=docs also writes
it to docs/screenshots/NAME.png (how the committed pictures are made).
"""

import base64
import hashlib
import http.client
import os
import re
import ssl
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest
from chromium import CHROMIUM, CHROMIUM_ARGS
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fleet import BIN, Primary

VIEWPORT = {"width": 1280, "height": 800}
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
# Playwright waits this long for an element or a condition: generous, the machine is shared.
EXPECT_TIMEOUT_MS = 20_000


@dataclass(frozen=True)
class Login:
    name: str
    password: str
    role: str


ADMIN = Login("ada", "ada-password-0123", "admin")
VIEWER = Login("vic", "vic-password-4567", "viewer")


def create_user(primary: Primary, user: Login) -> None:
    """With the real CLI; the password goes on stdin, as an operator would type it."""
    create_user_in(primary.data_dir, user)


def create_user_in(data_dir: Path, user: Login) -> None:
    result = subprocess.run(
        [str(BIN / "cifleet-primary"), "user", "create", user.name, "--role", user.role]
        + ["--data-dir", str(data_dir)],
        input=user.password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def server_key_pin(primary: Primary) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of the primary's server certificate."""
    cert = x509.load_pem_x509_certificate((primary.data_dir / "server.pem").read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture(scope="session")
def playwright_driver():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        yield driver


def create_test_users(data_dir: Path) -> None:
    for user in (ADMIN, VIEWER):
        create_user_in(data_dir, user)


@pytest.fixture
def sqlite_fleet_setup():
    """The UI tests' SQLite fleets hold their two users from the start (made once per
    session with the real CLI, tests/conftest.py: sqlite_fleet_setup)."""
    return create_test_users


@pytest.fixture
def users(primary, store_url) -> dict[str, Login]:
    if store_url is not None:
        create_test_users(primary.data_dir)
    return {"admin": ADMIN, "viewer": VIEWER}


@pytest.fixture(scope="session")
def browsers_by_pin(playwright_driver):
    """One Chromium per server key, for the session: the SQLite test fleets are copies of
    one template (tests/fleet.py), so they share a key, and a launch costs about a second.
    Each test still gets contexts of its own (cookies, cache, connections)."""
    browsers: dict[str, object] = {}
    yield browsers
    for browser in browsers.values():
        browser.close()


@pytest.fixture
def browser(browsers_by_pin, playwright_driver, primary):
    """A Chromium that trusts exactly this primary's server key."""
    pin = server_key_pin(primary)
    if pin not in browsers_by_pin:
        browsers_by_pin[pin] = playwright_driver.chromium.launch(
            executable_path=CHROMIUM,
            args=[*CHROMIUM_ARGS, f"--ignore-certificate-errors-spki-list={pin}"],
        )
    return browsers_by_pin[pin]


@pytest.fixture
def new_page(browser, primary, request, tmp_path):
    """Makes pages, each in its own browser context (its own cookies); at the end of the
    test a screenshot of every page is saved to tmp_path/screenshots/, and the test fails
    if a page had a script error or a Content-Security-Policy violation."""
    from playwright.sync_api import expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    pages = []
    errors: list[str] = []

    def make(viewport: dict = VIEWPORT):
        context = browser.new_context(viewport=viewport, base_url=primary.url)
        context.set_default_timeout(EXPECT_TIMEOUT_MS)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(f"script error: {exc}"))
        page.on("console", lambda msg: _console_error(msg, errors))
        pages.append(page)
        return page

    yield make
    folder = tmp_path / "screenshots"
    folder.mkdir(exist_ok=True)
    for i, page in enumerate(pages):
        page.screenshot(path=folder / f"{request.node.name}-{i}.png")
        page.context.close()
    assert not errors, "\n".join(errors)


def _console_error(msg, errors: list[str]) -> None:
    # A refused request (403, 400 ...) is logged as "Failed to load resource": the tests
    # make those on purpose. Anything else at error level is a defect of the page.
    if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
        errors.append(f"console: {msg.text}")


@pytest.fixture
def page(new_page):
    return new_page()


@pytest.fixture
def login(users):
    """login(page, "admin"|"viewer"): through the login form, as a person would."""
    from playwright.sync_api import expect

    def log_in(page, role: str = "admin") -> None:
        user = users[role]
        page.goto("/login")
        page.get_by_label("Name").fill(user.name)
        page.get_by_label("Password").fill(user.password)
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("button", name="Log out")).to_be_visible()

    return log_in


@pytest.fixture
def shot(tmp_path):
    """shot(page, "workers"): a screenshot now; with CIFLEET_UI_SCREENSHOTS=docs also to
    docs/screenshots/workers.png."""

    def take(page, name: str) -> Path:
        path = tmp_path / "screenshots" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        page.screenshot(path=path)
        if os.environ.get("CIFLEET_UI_SCREENSHOTS") == "docs":
            DOCS_SCREENSHOTS.mkdir(exist_ok=True)
            page.screenshot(path=DOCS_SCREENSHOTS / f"{name}.png")
        return path

    return take


@pytest.fixture
def session_post(primary):
    """session_post(page, path, form, headers) -> (status, body): a POST from outside the
    browser with the page's session cookie (TLS verified against the primary's CA), for
    what a forged or scripted request would send."""

    def post(page, path: str, form: dict[str, str], headers: dict | None = None):
        return _post(primary, page, path, form, headers)

    return post


def _post(
    primary: Primary, page, path: str, form: dict[str, str], headers: dict | None
) -> tuple[int, str]:
    cookies = "; ".join(f"{c['name']}={c['value']}" for c in page.context.cookies())
    context = ssl.create_default_context(cafile=str(primary.ca_file))
    conn = http.client.HTTPSConnection("127.0.0.1", primary.api_port, context=context, timeout=30)
    try:
        conn.request(
            "POST",
            path,
            body=urllib.parse.urlencode(form),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Cookie": cookies,
                **(headers or {}),
            },
        )
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


@pytest.fixture
def csrf_of():
    """csrf_of(page): the page's CSRF token (the meta tag every page carries)."""

    def token_of(page) -> str:
        token = page.locator('meta[name="csrf-token"]').get_attribute("content")
        assert token and re.fullmatch(r"[A-Za-z0-9_-]{40,}", token)
        return token

    return token_of


@pytest.fixture
def session_get(primary):
    """session_get(page, path, headers) -> (status, headers, body): a GET from outside the
    browser with the page's session cookie, read to its end (an event stream ends by
    itself: at the end of a finished run's log, or after --log-stream-seconds)."""

    def get(page, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
        cookies = "; ".join(f"{c['name']}={c['value']}" for c in page.context.cookies())
        context = ssl.create_default_context(cafile=str(primary.ca_file))
        conn = http.client.HTTPSConnection(
            "127.0.0.1", primary.api_port, context=context, timeout=60
        )
        try:
            conn.request("GET", path, headers={"Cookie": cookies, **(headers or {})})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    return get
