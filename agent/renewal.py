"""Renewing the worker certificate before it expires: a new key and CSR made here, signed
by the primary over mutual TLS, installed without stopping any run.

The primary keeps accepting the previous certificate until it expires, so connections
opened with it finish their requests; new connections use the new pair.
"""

import logging
import os
import time
from pathlib import Path

from agent import keys
from agent.calls import UnknownWorker
from agent.client import Client
from agent.home import CERT_FILE, KEY_FILE, load_config, update_config, write_atomic
from agent.protocol import REFUSED_CODES, RENEW_PATH

log = logging.getLogger(__name__)
RENEW_FRACTION = 2 / 3  # renew before two thirds of the lifetime have passed
RETRY_SECONDS = 30.0


class RenewalError(Exception):
    pass


def renew_after(cert_pem: bytes, received_at: float) -> float:
    """When to renew: two thirds of the way from receipt to expiry."""
    from cryptography import x509

    not_after = x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc.timestamp()
    return received_at + RENEW_FRACTION * (not_after - received_at)


def next_renewal(home: Path) -> float:
    """From config.json, or (for a home registered before renewal existed) from the
    certificate, taking its file's time as the time it was received."""
    config = load_config(home)
    if "renew_after" in config:
        return float(config["renew_after"])
    cert = home / CERT_FILE
    return renew_after(cert.read_bytes(), cert.stat().st_mtime)


def renew(home: Path, client: Client) -> float:
    """Get and install a new certificate for a new key; return the next renewal time.
    UnknownWorker when the primary refuses this worker's certificate altogether."""
    key = keys.new_key()
    resp = client.post_json(RENEW_PATH, {"csr": keys.csr_pem(key, load_config(home)["name"])})
    if resp.status == 403 and resp.code in REFUSED_CODES:
        raise UnknownWorker(resp.code, resp.message)
    if resp.status != 200:
        raise RenewalError(f"HTTP {resp.status}: {resp.message}")
    cert = str(resp.json().get("certificate", ""))
    if not keys.cert_matches_key(cert, key):
        raise RenewalError("the primary's certificate is not for the new key")
    install(home, keys.key_pem(key), cert.encode())
    nxt = renew_after(cert.encode(), time.time())
    update_config(home, renew_after=nxt)
    return nxt


def install(home: Path, key_pem: bytes, cert_pem: bytes) -> None:
    """Both files are written beside the old ones first, then renamed key, then cert;
    recover() finishes or undoes an install a crash cut short."""
    write_atomic(home / (KEY_FILE + ".new"), key_pem)
    write_atomic(home / (CERT_FILE + ".new"), cert_pem)
    os.replace(home / (KEY_FILE + ".new"), home / KEY_FILE)
    os.replace(home / (CERT_FILE + ".new"), home / CERT_FILE)


def recover(home: Path) -> None:
    key_new, cert_new = home / (KEY_FILE + ".new"), home / (CERT_FILE + ".new")
    if cert_new.exists() and not key_new.exists():
        os.replace(cert_new, home / CERT_FILE)  # the key was already renamed: finish
        log.info("finished installing a renewed certificate")
    else:
        # The renames never started: the old pair is intact and still accepted.
        key_new.unlink(missing_ok=True)
        cert_new.unlink(missing_ok=True)
