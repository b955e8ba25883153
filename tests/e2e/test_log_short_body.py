"""A log chunk whose sender stalls or goes away mid-body: nobody else waits for it, the
primary keeps the pieces that came, and it is a short body (logged; answered 400 where the
connection still allows), not an unhandled error."""

import socket
import ssl

import pytest
from fleet import AgentPeer, register_agent, wait_for
from pgcluster import both_engines

from primary.store.logs import WRITE_PIECE

pytestmark = both_engines


def _start_run(primary, fleet_root) -> tuple[AgentPeer, int]:
    assert register_agent(primary, fleet_root, "sender").returncode == 0
    worker = AgentPeer.of_home(primary, fleet_root / "sender")
    worker.answer()
    primary.pipeline("name: chatty\njobs:\n  - name: j\n    steps: ['true']\n")
    run_id = primary.trigger("chatty")
    [assignment] = worker.answer()["assignments"]
    assert assignment["run_id"] == run_id
    assert worker.call("POST", f"/agent/v1/runs/{run_id}/start", {"attempt": 1})[0] == 200
    return worker, run_id


def _send_part(primary, worker: AgentPeer, path: str, announced: int, data: bytes):
    """Open a request announcing `announced` bytes and send only `data`; the socket stays
    open."""
    raw = socket.create_connection(("127.0.0.1", primary.agent_port), timeout=30)
    tls = worker.context.wrap_socket(raw, server_hostname="127.0.0.1")
    tls.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {announced}\r\n"
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
    )
    return tls


def _nothing_answered(tls: ssl.SSLSocket) -> bool:
    """True if the server has sent no answer (nor closed) on the connection, yet."""
    tls.setblocking(False)
    try:
        return not tls.recv(1)  # b"": closed
    except ssl.SSLWantReadError:  # nothing but TLS housekeeping (session tickets) came
        return True
    finally:
        tls.setblocking(True)


# A body deadline of 8 s plus 1 s per MiB, not the default 20 s plus 1 s per 8 KiB (52 s
# for the piece that comes here): long enough for the resend below on a loaded machine.
@pytest.mark.parametrize(
    "primary", [("--body-timeout", "8", "--body-min-rate", str(1 << 20))], indirect=True
)
def test_a_stalled_log_chunk_holds_up_no_resend_and_its_timeout_is_a_short_body(
    primary, fleet_root
):
    worker, run_id = _start_run(primary, fleet_root)
    data = bytes(range(256)) * (3 * WRITE_PIECE // 256)
    log = f"/agent/v1/runs/{run_id}/jobs/j/log?attempt=1&offset=0"

    # One whole piece arrives, then the sender stalls with two more announced.
    stalled = _send_part(primary, worker, log, len(data), data[:WRITE_PIECE])
    wait_for(lambda: len(primary.job_log(run_id, "j")) == WRITE_PIECE, 30, "the first piece")

    # The agent's resend on another connection is stored at once, not after the stalled
    # body's socket timeout: the stalled request is still waiting when it is answered.
    assert worker.call("POST", log, data[: 2 * WRITE_PIECE]) == (200, {"size": 2 * WRITE_PIECE})
    assert _nothing_answered(stalled)

    # The stalled sender never sends the rest: when its body deadline passes (serve's
    # --body-timeout, and 1 s per --body-min-rate bytes) the read fails, and that is a
    # short body too, not an unhandled error. The connection then closes: the body it was
    # promised cannot be drained.
    stalled.settimeout(90)
    stalled.makefile("rb").read()
    stalled.close()
    wait_for(lambda: "came short" in primary.log_path.read_text(), 30, "the short chunk logged")
    primary_log = primary.log_path.read_text()
    assert (
        f"a log chunk of run {run_id} attempt 1 job j (offset 0) came short: the chunk ended "
        "524288 bytes before its announced length (the body missed its deadline: 8 s and 1 s per"
        " 1048576 bytes); the log keeps"
        " what came and has 524288 bytes" in primary_log
    ), primary_log
    assert "unhandled error" not in primary_log
    assert primary.job_log(run_id, "j") == data[: 2 * WRITE_PIECE]
