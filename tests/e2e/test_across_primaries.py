"""What one primary of a fleet does, the other sees: a UI login through one is a session on
both (and a logout through either ends it on both), a job log written through one is
followed live through the other, byte for byte, and registration through one answers with
the agent URLs of both."""

import http.client
import json
import re
import ssl
import subprocess
import urllib.parse
from http.cookies import SimpleCookie

import pytest
from fleet import (
    BIN,
    Agent,
    AgentPeer,
    Primary,
    kill_workspace_processes,
    register_agent,
    wait_file_step,
    wait_for,
)

from agent import keys
from agent.protocol import REGISTER_PATH

ADA = ("ada", "ada-password-0123")


class Browser:
    """Plain HTTPS requests with a cookie jar carried by hand, to any primary: what a
    browser does when a load balancer sends it to one primary, then another."""

    def __init__(self) -> None:
        self.cookies: dict[str, str] = {}

    def request(
        self, primary: Primary, method: str, path: str, form: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], str]:
        context = ssl.create_default_context(cafile=str(primary.ca_file))
        conn = http.client.HTTPSConnection(
            primary.host, primary.api_port, context=context, timeout=30
        )
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            for header in response.msg.get_all("Set-Cookie") or []:
                for name, morsel in SimpleCookie(header).items():
                    self.cookies[name] = morsel.value
            return response.status, dict(response.getheaders()), response.read().decode()
        finally:
            conn.close()


def csrf_in(page: str) -> str:
    [token] = re.findall(r'<meta name="csrf-token" content="([^"]+)">', page)
    return token


def create_user(primary: Primary, name: str, password: str) -> None:
    result = subprocess.run(
        [str(BIN / "cifleet-primary"), "user", "create", name, "--role", "admin"]
        + ["--data-dir", str(primary.data_dir)],
        input=password + "\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_a_ui_login_through_one_primary_holds_on_the_other_until_a_logout_there(
    two_primaries,
):
    one, two = two_primaries
    create_user(one, *ADA)
    browser = Browser()
    status, _, page = browser.request(one, "GET", "/login")
    assert status == 200
    # Not logged in yet: the other primary sends the same cookie to the login form.
    status, headers, _ = browser.request(two, "GET", "/workers")
    assert status == 302 and headers["Location"].startswith("/login"), (status, headers)

    form = {"csrf_token": csrf_in(page), "name": ADA[0], "password": ADA[1], "next": ""}
    status, headers, _ = browser.request(one, "POST", "/login", form)
    assert status == 303, (status, headers)
    landing = headers["Location"]
    logged_in = dict(browser.cookies)
    status, _, page = browser.request(two, "GET", landing)
    assert status == 200 and ">Log out</button>" in page and "ada" in page
    # A state change through the second primary with the token the first issued.
    status, _, _ = browser.request(two, "POST", "/logout", {"csrf_token": csrf_in(page)})
    assert status == 303
    # The session ended in the store: the first primary refuses the cookie it issued.
    browser.cookies = dict(logged_in)
    for primary in (one, two):
        status, headers, _ = browser.request(primary, "GET", landing)
        assert status == 302 and headers["Location"].startswith("/login"), (status, headers)


@pytest.fixture
def agent_on_one(two_primaries, tmp_path):
    one, _ = two_primaries
    assert register_agent(one, tmp_path, "writer").returncode == 0
    agent = Agent(name="writer", home=tmp_path / "writer", log_path=tmp_path / "writer.log")
    agent.start()
    yield agent
    agent.stop()
    kill_workspace_processes(agent.home)  # a failed test's job, still waiting for its gate


# What the job prints before each gate: a partial line, a carriage return, bytes that are
# no UTF-8: each piece must reach the other primary as it is, before the next is printed.
PIECES = [b"line 1\n", b"no newline yet", b" ... done\r\xff\x00\n", b"last\n"]


def test_a_log_written_through_one_primary_is_followed_live_through_the_other(
    two_primaries, agent_on_one, tmp_path
):
    one, two = two_primaries
    gates = [tmp_path / f"gate-{i}" for i in range(len(PIECES))]
    steps = []
    for piece, gate in zip(PIECES, gates, strict=True):
        octal = "".join(f"\\{b:03o}" for b in piece)
        steps.append(f"printf '{octal}'; {wait_file_step(gate)}")
    one.pipeline(
        "name: gated\njobs:\n  - name: w\n    steps:\n"
        + "".join(f"      - {json.dumps(step)}\n" for step in steps)
    )
    run_id = one.trigger("gated")
    followed = bytearray()

    def follow() -> int:
        """Through the second primary, as a follower does: from the bytes read so far."""
        status, _, body = two.client.request(
            "GET", f"/api/v1/runs/{run_id}/jobs/w/log?offset={len(followed)}"
        )
        assert status == 200, body
        followed.extend(body)
        return len(followed)

    for i, gate in enumerate(gates):
        expected = b"".join(PIECES[: i + 1])
        size = len(expected)
        wait_for(lambda n=size: follow() >= n, 30, f"piece {i} through the second primary")
        assert bytes(followed) == expected
        # The job printed it and waits for this gate, which only the test makes: it runs.
        run = two.run(run_id)
        assert run["state"] == "running" and not gate.exists(), run
        status, headers, body = two.client.request(
            "GET", f"/api/v1/runs/{run_id}/jobs/w/log?offset={len(followed)}"
        )
        assert (status, body, headers["x-log-complete"]) == (200, b"", "false")
        assert int(headers["x-log-size"]) == len(expected)
        gate.touch()
    assert two.wait_run(run_id)["state"] == "success"
    assert (
        bytes(followed) == b"".join(PIECES) == two.job_log(run_id, "w") == one.job_log(run_id, "w")
    )
    # Written through the first primary: the agent never left it.
    assert agent_on_one.config()["agent_url"] == f"https://127.0.0.1:{one.agent_port}"
    assert "moving to" not in agent_on_one.log_path.read_text()


def register_by_hand(primary: Primary, name: str) -> dict:
    """POST the registration as `cifleet-agent register` does; the primary's answer."""
    body = {
        "secret": primary.secret(),
        "name": name,
        "tags": [],
        "slots": 1,
        "version": "0",
        "csr": keys.csr_pem(keys.new_key(), name),
    }
    context = ssl.create_default_context(cafile=str(primary.ca_file))
    conn = http.client.HTTPSConnection(primary.host, primary.api_port, context=context, timeout=30)
    try:
        conn.request("POST", REGISTER_PATH, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 201, response.read()
        return json.loads(response.read())
    finally:
        conn.close()


def test_registration_through_one_primary_names_the_agent_urls_of_both(two_primaries, tmp_path):
    one, two = two_primaries
    first, *_ = urls = [f"https://127.0.0.1:{p.agent_port}" for p in (one, two)]
    urls.sort()
    # Until the first primary has seen the second in the store (its beat), it knows only
    # itself: wait for that through a poll answer, which reads the same list.
    assert register_agent(one, tmp_path, "scout").returncode == 0
    scout = AgentPeer.of_home(one, tmp_path / "scout")
    wait_for(
        lambda: sorted(scout.answer().get("primaries", [])) == urls,
        30,
        "the first primary to know of the second",
    )
    answer = register_by_hand(one, "by-hand")
    assert answer["agent_url"] == first
    assert sorted(answer["primaries"]) == urls
    # The agent keeps the list from its registration on: it can move before its first poll.
    assert register_agent(one, tmp_path, "saved").returncode == 0
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["agent_url"] == first
    assert sorted(config["agent_urls"]) == urls
