#!/usr/bin/python
"""Ansible module: everything the cifleet_worker role needs to know about a host, read in
one round trip. It changes nothing.

The role's preflight checks its answer (Python, systemd, the primary reachable from the
host) before anything is changed, and its install, register and service steps act only
where the answer differs from what they want, so a run that changes nothing costs one
module execution per host instead of one per step.
"""

DOCUMENTATION = r"""
module: cifleet_worker_probe
short_description: Read a host's state for the cifleet_worker role (changes nothing).
description:
  - Reports the Python that will run the agent (version, venv support, wheel tags), whether
    systemd runs the host, whether the primary answers a TLS handshake from the host, the
    installed agent, the registration (C(cifleet-agent check)), the paths asked about, and
    what the cifleet_worker_layout module would change.
options:
  python:
    description: The Python that creates the agent's virtual environment.
    type: str
    required: true
  venv:
    description: The agent's virtual environment.
    type: path
    required: true
  home:
    description: The agent home (for C(cifleet-agent check)).
    type: path
    required: true
  primary_url:
    description: The primary's URL as the host reaches it; an empty string skips the test.
    type: str
    default: ""
  ca_pem:
    description: The fleet CA certificate the primary's certificate must verify against.
    type: str
    default: ""
  connect_timeout:
    description: Seconds the connection to the primary may take.
    type: float
    default: 5
  paths:
    description: Paths to report (exists, kind, owner, group, mode, SHA-256 of files).
    type: list
    elements: path
    default: []
  service:
    description: systemd unit name to report (active, enabled).
    type: str
    default: ""
  check:
    description: Run C(cifleet-agent check) from the virtual environment when it is there.
    type: bool
    default: true
  layout:
    description: >-
      The spec the cifleet_worker_layout module takes; the probe reports what that module
      would change.
    type: dict
    default: {}
"""

import glob
import grp
import hashlib
import json
import os
import pwd
import re
import socket
import ssl
import stat
import subprocess
from urllib.parse import urlsplit

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.cifleet_worker_layout import plan

# Runs in the agent's Python (not necessarily Ansible's): what it is and what it can do.
PYTHON_FACTS = r"""
import json, platform, sys
facts = {
    "version": list(sys.version_info[:3]),
    "implementation": sys.implementation.name,
    "machine": platform.machine(),
    "libc": list(platform.libc_ver()),
}
try:
    import venv  # noqa: F401
    facts["venv"] = True
except ImportError:
    facts["venv"] = False
print(json.dumps(facts))
"""


def python_facts(python):
    try:
        result = subprocess.run(
            [python, "-c", PYTHON_FACTS],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except OSError as e:
        return {"found": False, "error": str(e)}
    if result.returncode != 0:
        return {"found": True, "error": result.stderr.strip()[-500:]}
    facts = json.loads(result.stdout)
    facts["found"] = True
    return facts


def primary_reachable(url, ca_pem, timeout):
    """None when the primary answers a verified TLS handshake, else why not."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or 443
    if not host:
        return f"not a URL with a host name: {url}"
    try:
        context = ssl.create_default_context(cadata=ca_pem or None)
    except (ssl.SSLError, ValueError) as e:
        return f"the CA certificate does not load: {e}"
    try:
        # Nested, not one parenthesised with: this runs on Python 3.8 too (to say it is old).
        with socket.create_connection((host, port), timeout=timeout) as raw:  # noqa: SIM117
            with context.wrap_socket(raw, server_hostname=host):
                return None
    except ssl.SSLCertVerificationError as e:
        return f"its certificate does not verify against the fleet CA: {e.verify_message}"
    except (OSError, ssl.SSLError) as e:
        return str(e) or type(e).__name__


def venv_facts(venv):
    """The venv's Python version (pyvenv.cfg) and the agent version installed in it, as
    the source spells it (agent/__init__.py; the dist-info name is normalised)."""
    facts = {"python": os.path.exists(os.path.join(venv, "bin", "python")), "version": None}
    try:
        with open(os.path.join(venv, "pyvenv.cfg")) as f:
            for line in f:
                key, _, value = line.partition("=")
                if key.strip() in ("version", "version_info"):
                    facts["version"] = value.strip()
    except OSError:
        pass
    facts["agent_version"] = None
    packages = os.path.join(venv, "lib", "python*", "site-packages")
    installed = glob.glob(os.path.join(packages, "cifleet-*.dist-info"))
    sources = glob.glob(os.path.join(packages, "agent", "__init__.py"))
    if len(installed) == 1 and len(sources) == 1:
        with open(sources[0]) as f:
            found = re.search(r'^__version__ = "([^"]+)"', f.read(), re.MULTILINE)
        facts["agent_version"] = found.group(1) if found else None
    return facts


def path_facts(path):
    try:
        st = os.lstat(path)
    except OSError:
        return {"exists": False}
    facts = {
        "exists": True,
        "isdir": stat.S_ISDIR(st.st_mode),
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "owner": _name(pwd.getpwuid, st.st_uid),
        "group": _name(grp.getgrgid, st.st_gid),
    }
    if stat.S_ISREG(st.st_mode):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        facts["sha256"] = digest.hexdigest()
    return facts


def _name(lookup, number):
    try:
        return lookup(number)[0]
    except KeyError:
        return str(number)


def systemd_facts(service):
    # sd_booted(): systemd runs this host when this folder exists.
    facts = {"booted": os.path.isdir("/run/systemd/system")}
    try:
        with open("/proc/1/comm") as f:
            facts["pid1"] = f.read().strip()
    except OSError:
        facts["pid1"] = "unknown"
    if facts["booted"] and service:
        for what in ("is-active", "is-enabled"):
            result = subprocess.run(
                ["systemctl", what, service],
                capture_output=True,
                text=True,
            )
            facts[what.replace("is-", "")] = result.stdout.strip()
    return facts


def agent_check(venv, home):
    agent = os.path.join(venv, "bin", "cifleet-agent")
    if not os.access(agent, os.X_OK):
        return None
    result = subprocess.run(
        [agent, "check", "--home", home],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return {"rc": result.returncode, "stdout": result.stdout, "stderr": result.stderr}


def main():
    module = AnsibleModule(
        argument_spec={
            "python": {"type": "str", "required": True},
            "venv": {"type": "path", "required": True},
            "home": {"type": "path", "required": True},
            "primary_url": {"type": "str", "default": ""},
            "ca_pem": {"type": "str", "default": ""},
            "connect_timeout": {"type": "float", "default": 5},
            "paths": {"type": "list", "elements": "path", "default": []},
            "service": {"type": "str", "default": ""},
            "check": {"type": "bool", "default": True},
            "layout": {"type": "dict", "default": {}},
        },
        supports_check_mode=True,
    )
    p = module.params
    venv = venv_facts(p["venv"])
    probe = {
        "python": python_facts(p["python"]),
        "systemd": systemd_facts(p["service"]),
        "venv": venv,
        "paths": {path: path_facts(path) for path in p["paths"]},
        "primary_error": (
            primary_reachable(p["primary_url"], p["ca_pem"], p["connect_timeout"])
            if p["primary_url"]
            else None
        ),
        "check": agent_check(p["venv"], p["home"]) if p["check"] else None,
        "layout_changes": plan(p["layout"]),
    }
    module.exit_json(changed=False, probe=probe)


if __name__ == "__main__":
    main()
