"""Outgoing webhooks of run state changes (`notify:` in a pipeline): posted to a real HTTP
receiver by a real primary as its runs start and finish, signed with the pipeline's secret,
retried with the same delivery id until the receiver takes them, and with two primaries on
one PostgreSQL, each posted by one of them."""

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fleet import Agent, register_agent, wait_for

SECRET = "n0tify-s3cret-value"
RETRY = ("--notify-retry-seconds", "0.2")


class Receiver:
    """An HTTP server that keeps every request and answers `failures` 500s first."""

    def __init__(self, failures: int = 0) -> None:
        self.requests: list[tuple[dict, bytes]] = []
        self.failures = failures
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    receiver.requests.append((dict(self.headers), body))
                    failing = receiver.failures > 0
                    receiver.failures -= failing
                self.send_response(500 if failing else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/hooks/ci?team=a"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def deliveries(self) -> dict[str, list[tuple[dict, bytes]]]:
        by_id: dict[str, list] = {}
        with self._lock:
            for headers, body in self.requests:
                by_id.setdefault(headers["X-Cifleet-Delivery"], []).append((headers, body))
        return by_id


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def pipeline(name: str, url: str, events: str = "[started, finished]") -> str:
    return (
        f"name: {name}\nnotify:\n  url: '{url}'\n  secret: HOOK_KEY\n  events: {events}\n"
        "jobs:\n  - name: build\n    steps: ['echo built']\n  - name: test\n"
        "    needs: [build]\n    steps: ['exit 3']\n"
    )


def set_secret(primary, name: str) -> None:
    status, _, body = primary.client.request(
        "PUT", f"/api/v1/pipelines/{name}/secrets/HOOK_KEY", SECRET.encode(), "text/plain"
    )
    assert status == 200, body


def signed(headers: dict, body: bytes) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["X-Cifleet-Signature-256"], expected)


@pytest.mark.parametrize("primary", [RETRY], indirect=True)
def test_a_run_posts_started_and_finished_signed(primary, start_agent, receiver):
    primary.pipeline(pipeline("hooked", receiver.url))
    set_secret(primary, "hooked")
    start_agent("w1")
    run_id = primary.trigger("hooked")
    assert primary.wait_run(run_id)["state"] == "failed"
    wait_for(lambda: len(receiver.requests) == 2, 30, "two notifications")

    (started_headers, started), (finished_headers, finished) = receiver.requests
    assert [h["X-Cifleet-Event"] for h, _ in receiver.requests] == ["run.started", "run.finished"]
    assert all(signed(h, b) for h, b in receiver.requests)
    assert started_headers["X-Cifleet-Delivery"] != finished_headers["X-Cifleet-Delivery"]
    assert started_headers["Content-Type"] == "application/json"
    started, finished = json.loads(started), json.loads(finished)
    assert (started["event"], started["run"]["state"]) == ("run.started", "running")
    assert started["run"]["id"] == run_id and started["run"]["pipeline"] == "hooked"
    assert started["run"]["worker_name"] == "w1"
    assert (finished["event"], finished["run"]["state"]) == ("run.finished", "failed")
    assert [(j["name"], j["state"], j["exit_code"]) for j in finished["jobs"]] == [
        ("build", "success", 0),
        ("test", "failed", 3),
    ]
    assert finished["run"]["trigger"]["kind"] == "api"
    listed = primary.client.json("GET", f"/api/v1/runs/{run_id}/notifications")["notifications"]
    assert [(n["event"], n["state"], n["attempts"], n["last_status"]) for n in listed] == [
        ("run.started", "delivered", 1, 204),
        ("run.finished", "delivered", 1, 204),
    ]
    # Nothing of the secret in the run, the primary's log or the notifications' record.
    said = primary.log_path.read_text() + json.dumps(primary.run(run_id)) + json.dumps(listed)
    assert SECRET not in said


@pytest.mark.parametrize("primary", [RETRY], indirect=True)
def test_a_notification_is_retried_with_its_delivery_id_until_taken(primary, start_agent):
    receiver = Receiver(failures=2)
    try:
        primary.pipeline(pipeline("flaky", receiver.url, "[finished]"))
        set_secret(primary, "flaky")
        start_agent("w1")
        run_id = primary.trigger("flaky")
        primary.wait_run(run_id)
        wait_for(lambda: len(receiver.requests) == 3, 30, "three posts of one notification")
        ((delivery, posts),) = receiver.deliveries().items()
        assert len(posts) == 3 and len({body for _, body in posts}) == 1
        listed = primary.client.json("GET", f"/api/v1/runs/{run_id}/notifications")
        (record,) = listed["notifications"]
        assert (str(record["id"]), record["state"], record["attempts"]) == (
            delivery,
            "delivered",
            3,
        )
        assert record["last_error"] is None
        said = primary.log_path.read_text()
        assert (
            f"notification {delivery} (run {run_id}, finished): attempt 2 failed: HTTP 500" in said
        )
        assert "/hooks/ci" not in said and "team=a" not in said  # the URL may hold a token
    finally:
        receiver.close()


@pytest.mark.parametrize("primary", [RETRY], indirect=True)
def test_an_unset_signing_secret_holds_the_notification_and_says_why(
    primary, start_agent, receiver
):
    primary.pipeline(pipeline("unsigned", receiver.url, "[finished]"))
    start_agent("w1")
    run_id = primary.trigger("unsigned")
    primary.wait_run(run_id)
    path = f"/api/v1/runs/{run_id}/notifications"
    wait_for(
        lambda: primary.client.json("GET", path)["notifications"][0]["attempts"] >= 2,
        30,
        "attempts without the secret",
    )
    (record,) = primary.client.json("GET", path)["notifications"]
    assert record["state"] == "pending"
    assert record["last_error"] == "the pipeline secret HOOK_KEY is not set"
    assert receiver.requests == []  # never sent unsigned
    set_secret(primary, "unsigned")
    wait_for(lambda: len(receiver.requests) == 1, 30, "the notification once the secret is set")
    assert signed(*receiver.requests[0])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("url", "'ftp://example.com/x'", "notify.url: must be an http or https URL with a host"),
        (
            "url",
            "'https://user:pw@example.com/x'",
            "notify.url: must not hold credentials; sign with `secret` instead",
        ),
        ("events", "[queued]", "notify.events: must be a non-empty list of started, finished"),
        ("secret", "'not a name'", "notify.secret: must be the name of a pipeline secret"),
    ],
)
def test_a_bad_notify_definition_is_refused_and_stores_nothing(primary, field, value, message):
    fields = {"url": "'https://example.com/x'", field: value}
    text = "name: bad\nnotify:\n" + "".join(f"  {k}: {v}\n" for k, v in fields.items())
    text += "jobs:\n  - name: a\n    steps: ['true']\n"
    status, _, body = primary.client.request(
        "POST", "/api/v1/pipelines", text.encode(), "application/yaml"
    )
    assert status == 400, body
    assert json.loads(body)["error"].startswith(message), body
    assert primary.client.request("GET", "/api/v1/pipelines/bad")[0] == 404


@pytest.mark.parametrize("two_primaries", [("--heartbeat-timeout", "6", *RETRY)], indirect=True)
def test_with_two_primaries_each_notification_is_posted_once(two_primaries, tmp_path, receiver):
    one, two = two_primaries
    one.pipeline(pipeline("shared", receiver.url, "[finished]"))
    set_secret(one, "shared")
    assert register_agent(one, tmp_path, "w1", slots=4).returncode == 0
    agent = Agent(name="w1", home=tmp_path / "w1", log_path=tmp_path / "w1.log")
    agent.start()
    try:
        runs = [(one if i % 2 else two).trigger("shared") for i in range(8)]
        for run_id in runs:
            one.wait_run(run_id)
        wait_for(lambda: len(receiver.deliveries()) == 8, 60, "eight notifications")
        by_id = receiver.deliveries()
        assert all(len(posts) == 1 for posts in by_id.values()), by_id.keys()
        assert sorted(json.loads(p[0][1])["run"]["id"] for p in by_id.values()) == sorted(runs)
    finally:
        agent.stop()
