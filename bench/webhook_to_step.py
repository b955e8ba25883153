"""Webhook delivery -> the first step's process start, for a pipeline that builds a git
repository of SIZE MB (random bytes in FILES files: no delta or compression helps), served
by a real `git daemon` on loopback, on one agent (as root: jobs under the pipeline's uid).
Prints one JSON object:

- first: a signed GitHub push delivery; the agent clones the repository and writes the
  tree into an empty workspace before the step starts;
- second (the median of --pushes): one changed file pushed and delivered; the agent
  fetches the change into its clone and rewrites the one file;
- empty_dispatch: trigger -> first step of a pipeline without a source (median);
- fetch: `git fetch` of one such change into a clone of the same repository, from the same
  daemon (median): what the second run cannot avoid;
- second_overhead = second - empty_dispatch - fetch: issue 17's target is <= 50 ms.

    sudo .venv/bin/python bench/webhook_to_step.py [--size-mb 100] [--files 2000] [--pushes 5]
"""

import argparse
import hashlib
import hmac
import http.client
import json
import os
import ssl
import statistics
import time
import uuid
from pathlib import Path

from common import bench_dir, load_test_module, shared_file, write_random_tree

git_servers = load_test_module("git_servers")
GitDaemon, Repos, fleet_with_builder, git = (
    git_servers.GitDaemon,
    git_servers.Repos,
    git_servers.fleet_with_builder,
    git_servers.git,
)


def fill(repos: Repos, name: str, size_mb: int, files: int) -> None:
    work = repos.root / f"{name}.work"
    write_random_tree(work, size_mb, files)
    git("add", "-A", cwd=work)
    git("commit", "-qm", "the repository", cwd=work)
    git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=work)


def change(repos: Repos, name: str, n: int) -> tuple[str, str]:
    """Push one changed 4 KiB file; (the commit before, the new commit)."""
    before = repos.head(name)
    work = repos.root / f"{name}.work"
    (work / "d00" / "f00000.bin").write_bytes(os.urandom(4096))
    git("commit", "-qam", f"change {n}", cwd=work)
    git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=work)
    return before, repos.head(name)


def deliver(primary, pipeline: str, secret: str, url: str, before: str, after: str) -> dict:
    """A GitHub push delivery, signed; its answer (the run's id in it)."""
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "before": before,
            "after": after,
            "created": False,
            "deleted": False,
            "forced": False,
            "head_commit": {"id": after, "message": "change", "author": {"name": "bench"}},
            "repository": {"full_name": "bench/big", "git_url": url, "clone_url": url},
        }
    ).encode()
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    context = ssl.create_default_context(cafile=str(primary.ca_file))
    conn = http.client.HTTPSConnection("127.0.0.1", primary.api_port, context=context, timeout=60)
    try:
        conn.request(
            "POST",
            f"/hooks/v1/pipelines/{pipeline}",
            body=body,
            headers={
                "Content-Type": "application/json",
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": str(uuid.uuid4()),
                "X-Hub-Signature-256": f"sha256={signature}",
            },
        )
        answer = conn.getresponse()
        body = json.loads(answer.read())
        assert answer.status in (200, 201, 202) and body.get("run_id"), (answer.status, body)
        return body
    finally:
        conn.close()


def first_step_after(marks: Path, before_lines: int, started_ns: int) -> float:
    """Milliseconds from `started_ns` to the stamp the first step wrote."""
    stamp = int(marks.read_text().splitlines()[before_lines])
    return (stamp - started_ns) / 1e6


def bench(size_mb: int, files: int, pushes: int) -> dict:
    with bench_dir() as tmp:
        root = Path(tmp)
        repos = Repos(root / "repos")
        repos.create("big")
        fill(repos, "big", size_mb, files)
        daemon = GitDaemon(repos.root, root / "git-daemon.log")
        url = daemon.url("big")
        marks = shared_file(root / "marks.txt")
        marks.write_text("")
        step = f"['date +%s%N >> {marks}']"
        try:
            with fleet_with_builder(root / "fleet") as (primary, _agent):
                primary.pipeline(
                    f"name: big\nsource:\n  git: '{url}'\n  ref: main\n"
                    f"jobs:\n  - name: build\n    steps: {step}\n"
                )
                primary.pipeline(f"name: empty\njobs:\n  - name: build\n    steps: {step}\n")
                secret = primary.client.json("GET", "/api/v1/pipelines/big/hook")["secret"]

                def one_delivery(n: int) -> float:
                    before, after = change(repos, "big", n)
                    lines = len(marks.read_text().splitlines())
                    time.sleep(0.2)  # the worker idle again, its long poll re-armed
                    started = time.time_ns()
                    answer = deliver(primary, "big", secret, url, before, after)
                    run = primary.wait_run(answer["run_id"], timeout=900)
                    assert run["state"] == "success", run
                    return first_step_after(marks, lines, started)

                first_ms = one_delivery(0)
                seconds = [one_delivery(n) for n in range(1, pushes + 1)]

                empty = []
                primary.wait_run(primary.trigger("empty"))  # its home chosen
                for _ in range(pushes):
                    lines = len(marks.read_text().splitlines())
                    time.sleep(0.2)
                    started = time.time_ns()
                    primary.wait_run(primary.trigger("empty"))
                    empty.append(first_step_after(marks, lines, started))

            # The fetch itself: the same one-file change, fetched from the same daemon.
            clone = root / "clone.git"
            git("clone", "-q", "--bare", url, str(clone))
            fetches = []
            for n in range(pushes):
                change(repos, "big", pushes + 1 + n)
                started = time.perf_counter()
                git("fetch", "-q", url, "+refs/heads/main:refs/heads/main", cwd=clone)
                fetches.append((time.perf_counter() - started) * 1000)
        finally:
            daemon.close()
    second, empty_ms, fetch = (statistics.median(v) for v in (seconds, empty, fetches))
    return {
        "size_mb": size_mb,
        "files": files,
        "pushes": pushes,
        "first_ms": round(first_ms, 1),
        "second_ms": round(second, 1),
        "second_all_ms": [round(v, 1) for v in seconds],
        "empty_dispatch_ms": round(empty_ms, 1),
        "fetch_ms": round(fetch, 1),
        "second_overhead_ms": round(second - empty_ms - fetch, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--pushes", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(bench(args.size_mb, args.files, args.pushes), indent=2))
