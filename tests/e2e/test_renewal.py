"""Worker certificates expire; the agent renews before two thirds of the lifetime, over
mutual TLS, without interrupting a running job — also past the old certificate's expiry."""

from cryptography import x509
from fleet import Agent, AgentPeer, init_primary, register_agent


def test_the_agent_renews_its_certificate_during_a_job(tmp_path):
    # 0.0002 days = 17.3 s: renewal due after about 11.5 s, the old certificate gone at 17 s.
    primary = init_primary(
        tmp_path,
        "--heartbeat-timeout",
        "6",
        "--primary-worker-slots",
        "0",
        "--worker-cert-days",
        "0.0002",
    )
    agent = None
    try:
        primary.start()
        assert register_agent(primary, tmp_path, "renewer").returncode == 0
        agent = Agent(name="renewer", home=tmp_path / "renewer", log_path=tmp_path / "agent.log")
        first = x509.load_pem_x509_certificate((agent.home / "worker.crt").read_bytes())
        expires_before = primary.worker("renewer")["certificate_expires"]
        agent.start()
        primary.pipeline("""
name: long
jobs:
  - name: tick
    steps: ['for i in $(seq 1 44); do echo "tick $i"; sleep 0.5; done']
""")
        run = primary.wait_run(primary.trigger("long"), timeout=60)
        assert run["state"] == "success", run
        assert primary.job_log(run["id"], "tick") == b"".join(
            b"tick %d\n" % i for i in range(1, 45)
        )
        renewed = x509.load_pem_x509_certificate((agent.home / "worker.crt").read_bytes())
        assert renewed.serial_number != first.serial_number
        assert renewed.not_valid_after_utc > first.not_valid_after_utc
        assert primary.worker("renewer")["certificate_expires"] > expires_before
        assert primary.worker("renewer")["state"] == "active"
        assert agent.proc.poll() is None, "the agent kept running"
        assert "renewed the worker certificate" in agent.log_path.read_text()
    finally:
        if agent is not None:
            agent.stop()
        primary.close()


def test_an_expired_certificate_is_refused(tmp_path):
    import time

    import pytest

    primary = init_primary(
        tmp_path, "--primary-worker-slots", "0", "--worker-cert-days", "0.0001"
    )  # 8.6 s
    try:
        primary.start()
        assert register_agent(primary, tmp_path, "lapsed").returncode == 0
        home = tmp_path / "lapsed"
        cert, key = str(home / "worker.crt"), str(home / "worker.key")
        assert AgentPeer(primary, cert, key).poll()[0] == 200
        expires = x509.load_pem_x509_certificate((home / "worker.crt").read_bytes())
        time.sleep(max(0.0, expires.not_valid_after_utc.timestamp() - time.time()) + 1)
        with pytest.raises(OSError):  # the TLS handshake fails: no application answer
            AgentPeer(primary, cert, key).poll()
    finally:
        primary.close()
