"""Push webhooks from GitHub, GitLab and Gitea, as they send them (their documented sample
payloads, trimmed, pointed at a real git daemon, signed as each forge signs), posted to a
real primary with a real agent: the run builds exactly the pushed commit, once per
delivery and body; deleted branches, other branches, tags and force-pushes do what
docs/api.md says; forged, foreign, oversized, repeated and replayed deliveries are refused,
and a source that keeps sending unsigned ones is rate limited (never its signed ones)."""

import concurrent.futures
import hashlib
import hmac
import http.client
import json
import ssl
import uuid

import pytest
from git_servers import fleet_with_builder

ZERO = "0" * 40


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fleet(request, git_root):
    """A primary and a root agent, on each engine: deliveries, their runs and the hook
    secrets are rows and vault entries of the store (ON CONFLICT ... RETURNING on both)."""
    store = None
    if request.param == "postgresql":
        store = request.getfixturevalue("pg_cluster").create_database()
    (git_root / request.param).mkdir()
    with fleet_with_builder(git_root / request.param, store) as (primary, _):
        yield primary


def post(primary, path: str, headers: dict, body: bytes, source: str = "127.0.0.1"):
    context = ssl.create_default_context(cafile=str(primary.ca_file))
    conn = http.client.HTTPSConnection(
        "127.0.0.1", primary.api_port, context=context, timeout=30, source_address=(source, 0)
    )
    try:
        conn.request(
            "POST", path, body=body, headers={"Content-Type": "application/json", **headers}
        )
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def github_push(url: str, ref: str, before: str, after: str, message: str, forced=False) -> dict:
    """GitHub's push event sample (docs.github.com, webhook events: push), trimmed."""
    return {
        "ref": ref,
        "before": before,
        "after": after,
        "created": before == ZERO,
        "deleted": after == ZERO,
        "forced": forced,
        "base_ref": None,
        "compare": "https://github.com/Codertocat/Hello-World/compare/6113728f27ae...000000000000",
        "commits": [],
        "head_commit": None if after == ZERO else {
            "id": after,
            "distinct": True,
            "message": message,
            "timestamp": "2019-05-15T15:20:30-05:00",
            "author": {"name": "Codertocat", "username": "Codertocat",
                       "email": "21031067+Codertocat@users.noreply.github.com"},
            "added": [], "removed": [], "modified": ["README.md"],
        },
        "repository": {
            "id": 186853002,
            "name": "Hello-World",
            "full_name": "Codertocat/Hello-World",
            "private": False,
            "html_url": "https://github.com/Codertocat/Hello-World",
            "git_url": url,
            "ssh_url": "git@github.com:Codertocat/Hello-World.git",
            "clone_url": "https://github.com/Codertocat/Hello-World.git",
            "default_branch": "main",
        },
        "pusher": {"name": "Codertocat", "email": "21031067+Codertocat@users.noreply.github.com"},
        "sender": {"login": "Codertocat", "id": 21031067, "type": "User"},
    }  # fmt: skip


def github_headers(secret: str, body: bytes, event="push", delivery=None) -> dict:
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "User-Agent": "GitHub-Hookshot/044aadd",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-GitHub-Hook-ID": "292430182",
        "X-Hub-Signature-256": f"sha256={signature}",
    }


class Hook:
    """A pipeline's webhook, as a forge holds it: its URL path and secret."""

    def __init__(self, primary, pipeline: str) -> None:
        self.primary = primary
        info = primary.client.json("GET", f"/api/v1/pipelines/{pipeline}/hook")
        assert info["url"].endswith(f"/hooks/v1/pipelines/{pipeline}")
        self.path = f"/hooks/v1/pipelines/{pipeline}"
        self.secret = info["secret"]

    def github(self, payload: dict, event="push", delivery=None, secret=None, source="127.0.0.1"):
        body = json.dumps(payload).encode()
        headers = github_headers(secret or self.secret, body, event, delivery)
        return post(self.primary, self.path, headers, body, source)


def define(primary, name: str, url: str, extra: str = "") -> None:
    primary.pipeline(
        f"name: {name}\nsource:\n  git: '{url}'\n  ref: main\n{extra}"
        "jobs:\n  - name: build\n    steps: ['git rev-parse HEAD']\n"
    )


def runs_of(primary, pipeline: str) -> list[dict]:
    return primary.client.json("GET", f"/api/v1/runs?pipeline={pipeline}")["runs"]


def built(primary, run_id: int) -> str:
    run = primary.wait_run(run_id)
    assert run["state"] == "success", run
    return primary.job_log(run_id, "build").decode().strip()


def test_a_github_push_runs_the_pushed_commit_once(fleet, repos, daemon):
    primary = fleet
    repos.create("gh")
    old = repos.commit("gh", "README.md", "one\n", "first")
    define(primary, "gh", daemon.url("gh"))
    hook = Hook(primary, "gh")
    status, _, answer = hook.github({"zen": "Design for failure.", "hook_id": 292430182}, "ping")
    assert (status, answer["answer"]) == (200, "pong")

    # The worker is locked, so the run waits while the branch moves on.
    primary.client.json("POST", "/api/v1/workers/builder/lock")
    pushed = repos.commit("gh", "README.md", "two\n", "the pushed commit")
    delivery = str(uuid.uuid4())
    payload = github_push(daemon.url("gh"), "refs/heads/main", old, pushed, "the pushed commit")
    status, _, answer = hook.github(payload, delivery=delivery)
    assert status == 201, answer
    run_id = answer["run_id"]
    repos.commit("gh", "README.md", "three\n", "pushed after")
    status, _, again = hook.github(payload, delivery=delivery)  # a redelivery
    assert (status, again) == (200, {"duplicate": True, "delivery": delivery, "run_id": run_id})
    # The same signed body under new delivery ids (the id is not signed: a replay), sent
    # together: no second run, whichever copy the store sees first.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replays = list(pool.map(lambda _: hook.github(payload), range(8)))
    seen = [(status, answer["run_id"], answer["same_body_as"]) for status, _, answer in replays]
    assert seen == [(200, run_id, delivery)] * 8
    # A new body, eight copies under eight ids at once: one run (a unique key, not a read
    # before the write).
    forced = github_push(daemon.url("gh"), "refs/heads/main", ZERO, pushed, "again", True)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        copies = list(pool.map(lambda _: hook.github(forced), range(8)))
    assert sorted(status for status, _, _ in copies) == [200] * 7 + [201]
    assert len({answer["run_id"] for _, _, answer in copies}) == 1
    second = copies[0][2]["run_id"]
    primary.client.json("POST", "/api/v1/workers/builder/unlock")

    assert built(primary, run_id) == pushed
    run = primary.run(run_id)
    assert run["trigger"] == {
        "kind": "webhook",
        "forge": "github",
        "event": "push",
        "delivery": delivery,
        "pusher": "Codertocat",
        "forced": False,
    }
    assert run["source"]["sha"] == run["source"]["commit"] == pushed
    assert run["source"]["subject"] == "the pushed commit"  # from the repository itself
    assert sorted(r["id"] for r in runs_of(primary, "gh")) == [run_id, second]
    assert built(primary, second) == pushed
    status, _, log = primary.client.request("GET", f"/api/v1/runs/{run_id}/log")
    assert f"    triggered by: a github push (delivery {delivery}) by Codertocat\n" in log.decode()


def test_what_each_kind_of_push_does(fleet, repos, daemon):
    primary = fleet
    repos.create("cases")
    url = daemon.url("cases")
    first = repos.commit("cases", "a", "1\n", "one")
    define(primary, "cases", url, "  branches: [main, 'release/*']\n  tags: ['v*']\n")
    hook = Hook(primary, "cases")

    # A branch the pipeline does not list, and a deleted branch: no run.
    other = repos.commit("cases", "a", "2\n", "on a feature", branch="feature/x")
    status, _, answer = hook.github(github_push(url, "refs/heads/feature/x", ZERO, other, "f"))
    assert status == 200
    assert (
        answer["ignored"]
        == "branch feature/x is not in the pipeline's branches ['main', 'release/*']"
    )
    status, _, answer = hook.github(github_push(url, "refs/heads/release/1", first, ZERO, ""))
    assert (status, answer["ignored"]) == (200, "branch release/1 was deleted: nothing to build")
    status, _, answer = hook.github(github_push(url, "refs/tags/nightly", ZERO, first, "t"))
    assert answer["ignored"] == "tag nightly is not in the pipeline's tags ['v*']"
    assert runs_of(primary, "cases") == []

    # A listed branch other than the ref: built at its pushed commit.
    release = repos.commit("cases", "a", "3\n", "a release", branch="release/1")
    status, _, answer = hook.github(github_push(url, "refs/heads/release/1", ZERO, release, "r"))
    assert status == 201
    assert built(primary, answer["run_id"]) == release
    assert primary.run(answer["run_id"])["source"]["ref"] == "refs/heads/release/1"

    # An annotated tag: the push names the tag object; the run checks out its commit.
    tag = repos.tag("cases", "v1.0", "version one")
    assert tag != release
    status, _, answer = hook.github(github_push(url, "refs/tags/v1.0", ZERO, tag, "version one"))
    assert status == 201
    assert built(primary, answer["run_id"]) == release
    source = primary.run(answer["run_id"])["source"]
    assert (source["ref"], source["sha"], source["commit"]) == ("refs/tags/v1.0", tag, release)

    # A force-push: main's commit is replaced; the clone kept on the worker has the old one,
    # and the run builds the new one.
    status, _, answer = hook.github(github_push(url, "refs/heads/main", ZERO, first, "one"))
    assert built(primary, answer["run_id"]) == first
    rewritten = repos.rewrite("cases", "one, rewritten", branch="main")
    payload = github_push(url, "refs/heads/main", first, rewritten, "one, rewritten", forced=True)
    status, _, answer = hook.github(payload)
    assert status == 201
    assert built(primary, answer["run_id"]) == rewritten
    assert primary.run(answer["run_id"])["trigger"]["forced"] is True

    # A commit the repository does not have: the run fails before its first job, saying why.
    missing = "d" * 40
    status, _, answer = hook.github(github_push(url, "refs/heads/main", rewritten, missing, "?"))
    run = primary.wait_run(answer["run_id"])
    assert [(j["name"], j["state"]) for j in run["jobs"]] == [("build", "failed")]
    assert primary.job_log(run["id"], "build").decode() == (
        "cifleet: the workspace could not be prepared, so no job ran: git: commit"
        f" {missing} is not on refs/heads/main of {url} any more (force-pushed away?)\n"
    )


def test_gitlab_and_gitea_pushes(fleet, repos, daemon):
    primary = fleet
    repos.create("forges")
    url = daemon.url("forges")
    define(primary, "forges", url)
    hook = Hook(primary, "forges")

    # GitLab (docs.gitlab.com, webhook events: push), trimmed; its token is the secret.
    sha = repos.commit("forges", "README.md", "gitlab\n", "fixed readme")
    gitlab = {
        "object_kind": "push", "event_name": "push", "before": ZERO, "after": sha,
        "ref": "refs/heads/main", "checkout_sha": sha, "user_id": 4, "user_name": "John Smith",
        "user_username": "jsmith", "user_email": "john@example.com", "project_id": 15,
        "project": {"id": 15, "name": "Diaspora", "web_url": "http://example.com/mike/diaspora",
                    "git_ssh_url": "git@example.com:mike/diaspora.git", "git_http_url": url,
                    "namespace": "Mike", "path_with_namespace": "mike/diaspora"},
        "repository": {"name": "Diaspora", "url": "git@example.com:mike/diaspora.git",
                       "homepage": "http://example.com/mike/diaspora", "git_http_url": url},
        "commits": [{"id": sha, "message": "fixed readme", "title": "fixed readme",
                     "timestamp": "2012-01-03T23:36:29+02:00",
                     "author": {"name": "GitLab dev user", "email": "gitlabdev@example.com"}}],
        "total_commits_count": 1,
    }  # fmt: skip
    body = json.dumps(gitlab).encode()
    headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Event-UUID": str(uuid.uuid4())}
    status, _, answer = post(primary, hook.path, {**headers, "X-Gitlab-Token": "nope"}, body)
    assert (status, answer["code"]) == (401, "bad_signature")
    status, _, answer = post(primary, hook.path, {**headers, "X-Gitlab-Token": hook.secret}, body)
    assert status == 201, answer
    assert built(primary, answer["run_id"]) == sha
    assert primary.run(answer["run_id"])["trigger"]["pusher"] == "jsmith"

    # Gitea (docs.gitea.com, webhooks), trimmed; it sends GitHub's event header too.
    sha = repos.commit("forges", "README.md", "gitea\n", "from gitea")
    gitea = {
        "ref": "refs/heads/main", "before": ZERO, "after": sha,
        "compare_url": "http://localhost:3000/gitea/webhooks/compare/dca3...",
        "commits": [{"id": sha, "message": "from gitea\n", "url": "http://localhost:3000/x",
                     "author": {"name": "Gitea", "email": "someone@gitea.io"}}],
        "repository": {"id": 140, "name": "webhooks", "full_name": "gitea/webhooks",
                       "html_url": "http://localhost:3000/gitea/webhooks",
                       "ssh_url": "ssh://gitea@localhost:2222/gitea/webhooks.git",
                       "clone_url": url},
        "pusher": {"login": "gitea", "username": "gitea"},
        "sender": {"login": "gitea", "username": "gitea"},
    }  # fmt: skip
    body = json.dumps(gitea).encode()
    signature = hmac.new(hook.secret.encode(), body, hashlib.sha256).hexdigest()
    delivery = str(uuid.uuid4())
    headers = {
        "X-Gitea-Event": "push", "X-Gitea-Delivery": delivery, "X-Gitea-Signature": signature,
        "X-GitHub-Event": "push", "X-GitHub-Delivery": delivery, "X-Gogs-Event": "push",
    }  # fmt: skip
    status, _, answer = post(primary, hook.path, headers, body)
    assert status == 201, answer
    assert built(primary, answer["run_id"]) == sha
    run = primary.run(answer["run_id"])
    assert (run["trigger"]["forge"], run["trigger"]["pusher"]) == ("gitea", "gitea")


def test_refused_deliveries_and_the_rate_limit(fleet, repos, daemon):
    primary = fleet
    repos.create("strict")
    url = daemon.url("strict")
    sha = repos.commit("strict", "a", "a\n", "a")
    define(primary, "strict", url)
    hook = Hook(primary, "strict")
    payload = github_push(url, "refs/heads/main", ZERO, sha, "a")

    # Not signed with the pipeline's secret: one answer whether the pipeline exists, has
    # no git source or no secret yet, so an outsider learns no pipeline names.
    primary.pipeline("name: plain\njobs:\n  - name: a\n    steps: ['true']\n")
    for name in ("strict", "nope", "plain"):
        body = json.dumps(payload).encode()
        headers = github_headers("not-the-secret", body)
        status, _, answer = post(primary, f"/hooks/v1/pipelines/{name}", headers, body)
        assert (status, answer["code"], answer["error"]) == (
            401,
            "bad_signature",
            f"the delivery is not signed with the hook secret of pipeline {name!r}"
            " (an admin's GET /api/v1/pipelines/NAME/hook shows it)",
        ), name
    foreign = {**payload, "repository": {**payload["repository"], "git_url": "git://x/y.git"}}
    status, _, answer = hook.github(foreign)
    assert (status, answer["code"]) == (404, "unknown_repository")
    status, _, answer = post(primary, hook.path, {"X-Whatever": "1"}, b"{}")
    assert status == 400 and "not a webhook" in answer["error"]
    body = b"not json"
    status, _, answer = post(primary, hook.path, github_headers(hook.secret, body), body)
    assert status == 400 and answer["error"].startswith("not a push event")
    # Refused from the declared length, before a byte of the body is read: none is sent.
    context = ssl.create_default_context(cafile=str(primary.ca_file))
    conn = http.client.HTTPSConnection("127.0.0.1", primary.api_port, context=context, timeout=30)
    try:
        conn.putrequest("POST", hook.path)
        for name, value in github_headers(hook.secret, b"").items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str((1 << 20) + 1))
        conn.endheaders()
        resp = conn.getresponse()
        assert (resp.status, json.loads(resp.read())["code"]) == (413, "too_large")
    finally:
        conn.close()
    assert runs_of(primary, "strict") == []

    # Rotated: the old secret's signatures are refused, the new one's taken.
    old = hook.secret
    rotated = primary.client.json("POST", "/api/v1/pipelines/strict/hook/rotate")["secret"]
    assert rotated != old
    assert hook.github({"zen": "x"}, "ping", secret=old)[0] == 401
    assert hook.github({"zen": "x"}, "ping", secret=rotated)[0] == 200
    assert primary.client.json("GET", "/api/v1/pipelines/strict/hook")["secret"] == rotated

    # A source that keeps sending unsigned deliveries is refused for a while (this one
    # is not); its signed ones are never refused: the forge's genuine deliveries get
    # through even when someone sends bad ones from the forge's addresses.
    for _ in range(20):
        assert hook.github(payload, secret="guess", source="127.0.0.2")[0] == 401
    status, headers, answer = hook.github(payload, secret="guess", source="127.0.0.2")
    assert (status, answer["code"]) == (429, "rate_limited")
    assert int(headers["Retry-After"]) > 0
    assert hook.github({"zen": "x"}, "ping", secret=rotated, source="127.0.0.2")[0] == 200
    status, _, answer = hook.github(payload, secret=rotated, source="127.0.0.2")
    assert status == 201, answer
    assert built(primary, answer["run_id"]) == sha
    assert hook.github(payload, secret="guess", source="127.0.0.2")[0] == 429
    assert hook.github({"zen": "x"}, "ping", secret="guess")[0] == 401
