"""Register this host with the primary: make a key and CSR here, send the CSR with the worker
secret, store what comes back in the agent home.

cryptography is imported inside the functions that need it, so `cifleet-agent run` (which
never registers) does not pay for it in memory.
"""

import json
import os
import socket
import ssl
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

from agent import __version__, keys
from agent.client import Client, TransportError
from agent.home import (
    CA_FILE,
    CERT_FILE,
    CONFIG_FILE,
    KEY_FILE,
    is_registered,
    load_config,
    write_atomic,
)
from agent.primaries import valid_url
from agent.protocol import NAME_RE, REGISTER_PATH
from agent.renewal import renew_after

__all__ = ["RegistrationError", "is_registered", "read_secret", "register"]

_HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH


class RegistrationError(Exception):
    """Registration failed; str(e) is a one-line message for the operator."""


def read_secret(secret_file: Path) -> str:
    """The worker secret from its file, surrounding whitespace removed."""
    try:
        secret = Path(secret_file).read_text().strip()
    except FileNotFoundError:
        raise RegistrationError(f"secret file {secret_file} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RegistrationError(f"cannot read secret file {secret_file}: {e}") from None
    if not secret:
        raise RegistrationError(f"secret file {secret_file} is empty")
    return secret


def register(
    primary_url: str,
    ca_file: Path,
    secret: str,
    name: str,
    tags: list[str],
    slots: int,
    home: Path,
    jobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Register with the primary and write the home; return the config. `jobs`: where and
    as whom jobs run (work_dir, job_uids, job_user: agent.identity), kept in the config.

    A home that is already registered is left as it is and its config returned.
    """
    home = Path(home)
    if is_registered(home):
        return load_config(home)
    _check_request(primary_url, secret, name, tags, slots)
    ca_pems = _read_ca(Path(ca_file))

    key = keys.new_key()
    body = {
        "secret": secret,
        "name": name,
        "tags": list(tags),
        "slots": slots,
        "version": __version__,
        "csr": keys.csr_pem(key, name),
    }
    resp = _post(primary_url, Path(ca_file), body)
    answer = _check_answer(resp, name)
    if not keys.same_ca(answer["ca_certificate"], ca_pems):
        raise RegistrationError(
            f"the primary sent a CA certificate that differs from the one in {ca_file}"
        )
    if not keys.cert_matches_key(answer["certificate"], key):
        raise RegistrationError("the certificate the primary issued is not for our key")

    config = {
        "worker_id": answer["worker_id"],
        "name": name,
        "tags": list(tags),
        "slots": slots,
        "primary_url": primary_url,
        "agent_url": answer["agent_url"],
        "renew_after": renew_after(answer["certificate"].encode(), time.time()),
        **(jobs or {}),
    }
    if others := _primaries(answer):  # a fleet of several primaries
        config["agent_urls"] = others
    _write_home(
        home,
        [
            (KEY_FILE, keys.key_pem(key)),
            (CERT_FILE, answer["certificate"].encode()),
            (CA_FILE, answer["ca_certificate"].encode()),
            # Last: its presence is what makes the home count as registered.
            (CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode()),
        ],
    )
    return config


def _check_request(primary_url: str, secret: str, name: str, tags: list[str], slots: int) -> None:
    url = urllib.parse.urlsplit(primary_url)
    if url.scheme != "https" or not url.hostname:
        raise RegistrationError(f"the primary URL must be https://HOST[:PORT], not {primary_url}")
    if not secret:
        raise RegistrationError("the worker secret is empty")
    if not NAME_RE.match(name):
        raise RegistrationError(
            f"invalid worker name {name!r}: use letters, digits, '.', '_', '-' (max 64)"
        )
    for tag in tags:
        if not NAME_RE.match(tag):
            raise RegistrationError(f"invalid tag {tag!r}: use letters, digits, '.', '_', '-'")
    if not 1 <= slots <= 64:
        raise RegistrationError(f"slots must be between 1 and 64, not {slots}")


def _read_ca(ca_file: Path) -> list[bytes]:
    from cryptography import x509

    try:
        data = ca_file.read_bytes()
    except FileNotFoundError:
        raise RegistrationError(f"CA file {ca_file} does not exist") from None
    except OSError as e:
        raise RegistrationError(f"cannot read CA file {ca_file}: {e}") from None
    if not data.strip():
        raise RegistrationError(f"CA file {ca_file} is empty")
    try:
        with warnings.catch_warnings():
            # Odd certificates in a system bundle would print warnings; errors stay one line.
            warnings.simplefilter("ignore")
            certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise RegistrationError(f"CA file {ca_file} holds no PEM certificate") from None
    return [keys.der(c) for c in certs]


def _post(primary_url: str, ca_file: Path, body: dict[str, Any]):
    try:
        ctx = ssl.create_default_context(cafile=str(ca_file))
    except ssl.SSLError as e:
        raise RegistrationError(f"cannot use CA file {ca_file}: {e}") from None
    client = Client(primary_url, ctx)
    try:
        return client.post_json(REGISTER_PATH, body)
    except TransportError as e:
        raise RegistrationError(_transport_message(e, primary_url, ca_file)) from None
    finally:
        client.close()


def _transport_message(e: TransportError, primary_url: str, ca_file: Path) -> str:
    cause = e.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        if cause.verify_code == _HOSTNAME_MISMATCH:
            host = urllib.parse.urlsplit(primary_url).hostname
            return f"the primary's certificate is not valid for the host name {host}"
        return f"the primary's certificate is not signed by the CA in {ca_file}"
    if isinstance(cause, socket.gaierror):
        return f"cannot reach the primary at {primary_url}: unknown host"
    return f"cannot reach the primary at {primary_url}: {e}"


def _check_answer(resp, name: str) -> dict[str, str]:
    if resp.status == 401:
        raise RegistrationError("the primary refused the worker secret")
    if resp.status == 409:
        raise RegistrationError(f"the primary already has a worker named {name}")
    if resp.status == 400:
        raise RegistrationError(f"the primary refused the registration: {resp.message}")
    if resp.status != 201:
        raise RegistrationError(
            f"unexpected answer from the primary: HTTP {resp.status}: {resp.message}"
        )
    answer = resp.json()
    fields = ("worker_id", "certificate", "ca_certificate", "agent_url")
    if not all(isinstance(answer.get(f), str) and answer[f] for f in fields):
        raise RegistrationError(
            "the primary's answer lacks worker_id, certificate, ca_certificate or agent_url"
        )
    if not answer["agent_url"].startswith("https://"):
        raise RegistrationError(
            f"the primary sent an agent URL that is not https: {answer['agent_url']}"
        )
    return answer


def _write_home(home: Path, files: list[tuple[str, bytes]]) -> None:
    if not home.exists():
        home.mkdir(mode=0o700, parents=True)
        os.chmod(home, 0o700)  # mkdir's mode is masked by the umask
    written: list[Path] = []
    try:
        for name, data in files:
            write_atomic(home / name, data, 0o600)
            written.append(home / name)
    except BaseException:
        # Leave no half-registered home behind: the next register starts clean.
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _primaries(answer: dict[str, Any]) -> list[str]:
    """The agent URLs of the fleet's other primaries, if the answer lists them."""
    urls = answer.get("primaries")
    return [u for u in urls[:64] if valid_url(u)] if isinstance(urls, list) else []
