"""Simulated idle agents, for fleets larger than one machine's real agents can reach
(bench/idle_fleet.py --light).

Each simulated agent has its own certificate and its own TLS connection (the real agent's
context, agent.client.agent_context) and polls as agent.worker does with nothing to run:
the same poll body, the poll held on one kept connection and sent again when answered, the
agent's jittered backoff after a failure and its pause after a quick empty answer. What it
leaves out is what an idle agent does not use (runs, renewals) and its cost: a real agent
is two threads, and 1,000 of them in one process spend their CPU on the GIL and thread
switches, so at 5,000 their handshakes missed the primary's deadline and they reconnected
in a loop. Here all of a process's agents share one asyncio loop.
"""

import asyncio
import collections
import contextlib
import json
import random
import secrets
import sys
import time
from pathlib import Path

from agent import __version__
from agent.backoff import Backoff, poll_pause
from agent.client import REQUEST_TIMEOUT_SECONDS, USER_AGENT, agent_context
from agent.load import load_report
from agent.protocol import (
    IDLE_POLL_CLIENT_TIMEOUT_SECONDS,
    IDLE_POLL_MAX_HOLD_SECONDS,
    POLL_HOLD_SECONDS,
    POLL_PATH,
)
from agent.worker import QUICK_ANSWER_SECONDS


class Refused(Exception):
    pass


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """One HTTP/1.1 answer: its status, whether the connection stays open, its body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("connection", "").lower() != "close", body


async def run_agent(
    home: Path,
    host: str,
    port: int,
    load: dict,
    stop: asyncio.Event,
    answered=None,
    failures: collections.Counter | None = None,
) -> None:
    """One simulated agent until `stop`; each poll answered counts in `answered` (a
    multiprocessing.Value), when given, and each that failed in `failures`, by cause."""
    context = agent_context(home)
    session = secrets.token_hex(8)
    backoff = Backoff()
    writer = None
    while not stop.is_set():
        body = json.dumps(
            {
                "version": __version__,
                "slots": 1,
                "draining": False,
                "load": load,
                "runs": [],
                "abandoned": [],
                "session": session,
                "workspaces": [],
                "evicted_workspaces": [],
                "job_identity": {"mode": "shared", "uid": 1000},
                "wait": True,
                "max_hold": IDLE_POLL_MAX_HOLD_SECONDS,
            }
        ).encode()
        request = (
            f"POST {POLL_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: {USER_AGENT}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port, ssl=context),
                    REQUEST_TIMEOUT_SECONDS,
                )
            started = time.monotonic()
            writer.write(request)
            status, keep, answer = await asyncio.wait_for(
                _read_answer(reader), IDLE_POLL_CLIENT_TIMEOUT_SECONDS
            )
            if status != 200:
                raise Refused(f"HTTP {status}")
            if not keep:
                writer.close()
                writer = None
            backoff.reset()
            if answered is not None:
                with answered.get_lock():
                    answered.value += 1
            if time.monotonic() - started < QUICK_ANSWER_SECONDS:
                pause = poll_pause(json.loads(answer).get("poll_after"), POLL_HOLD_SECONDS)
                await _sleep_unless(stop, pause)
        except (
            OSError,
            EOFError,
            TimeoutError,
            asyncio.IncompleteReadError,
            Refused,
            ValueError,
        ) as e:
            if failures is not None:
                failures[str(e) if isinstance(e, Refused) else type(e).__name__] += 1
            if writer is not None:
                writer.close()
                writer = None
            await _sleep_unless(stop, backoff.next_delay())
    if writer is not None:
        writer.close()


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


FAILURES_EVERY = 30.0  # seconds between a process's failure counts on stderr


def run_light_agents(homes: list[Path], host: str, port: int, stop, answered=None) -> None:
    """In a process of its own: the simulated agents of `homes` until `stop` (a process
    event), all started at once, as a fleet reconnecting to a restarted primary does; the
    polls answered count in `answered` (a multiprocessing.Value), when given. Every
    FAILURES_EVERY seconds the polls that failed so far, by cause, go to stderr."""

    async def main() -> None:
        done = asyncio.Event()
        load = load_report()
        failures: collections.Counter = collections.Counter()
        tasks = [
            asyncio.create_task(run_agent(home, host, port, load, done, answered, failures))
            for home in random.sample(homes, len(homes))
        ]
        reporter = asyncio.create_task(report_failures(failures, done))
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        done.set()
        for task in tasks:  # held polls end now, not at the end of their hold
            task.cancel()
        await asyncio.gather(*tasks, reporter, return_exceptions=True)

    asyncio.run(main())


async def report_failures(failures: collections.Counter, stop: asyncio.Event) -> None:
    started = time.monotonic()
    while not stop.is_set():
        await _sleep_unless(stop, FAILURES_EVERY)
        if failures:
            seconds = round(time.monotonic() - started)
            print(json.dumps({"seconds": seconds, "failed_polls": failures}), file=sys.stderr)
