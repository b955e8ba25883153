"""`cifleet-primary`, counting every SQLite statement it runs and every request it serves
(bench/profile_dispatch.py).

    python bench/counted_primary.py serve --data-dir DIR ...   (CIFLEET_BENCH_STATEMENTS=FILE)

Each connection gets a trace callback that counts statements by their text with literals
replaced by `?`; each request through a WSGI bridge is counted by its method and path with
numbers replaced by `N`. At a clean exit (SIGTERM) both go to FILE as JSON. A bench tool:
the counting costs CPU, so profiles are taken without it.
"""

import atexit
import collections
import json
import os
import re
import sqlite3
import threading

_LITERAL = re.compile(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b|X'[0-9A-Fa-f]*'")
_NUMBER = re.compile(r"\d+")
_counts: collections.Counter = collections.Counter()
_requests: collections.Counter = collections.Counter()
_lock = threading.Lock()
_connect = sqlite3.connect


def _count(statement: str) -> None:
    shape = " ".join(_LITERAL.sub("?", statement).split())
    with _lock:
        _counts[shape] += 1


def _counting_connect(*args, **kwargs) -> sqlite3.Connection:
    conn = _connect(*args, **kwargs)
    conn.set_trace_callback(_count)
    return conn


def _count_requests(bridge_class: type) -> None:
    serve = bridge_class.__call__

    async def counted(self, request):
        _requests[f"{request.method} {_NUMBER.sub('N', request.path)}"] += 1
        return await serve(self, request)

    bridge_class.__call__ = counted


def _dump() -> None:
    with open(os.environ["CIFLEET_BENCH_STATEMENTS"], "w") as out:
        counts = {"statements": dict(_counts.most_common()), "requests": dict(_requests)}
        json.dump(counts, out, indent=1)


if __name__ == "__main__":
    sqlite3.connect = _counting_connect
    atexit.register(_dump)
    from primary.cli.main import main
    from primary.server.wsgi import WSGIBridge

    _count_requests(WSGIBridge)

    raise SystemExit(main())
