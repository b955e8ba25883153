#!/usr/bin/env bash
# Installs everything the test suite needs (system packages too) and runs the whole suite.
# Works on a fresh Debian/Ubuntu machine with Python 3.11; run it from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the suite uses, as "command:package"; each is installed only when its
# command is missing (as root, or with sudo when present).
# sshd/ssh-keygen: the playbook tests serve their "hosts" over a real local sshd;
# systemd-analyze verifies the unit file the role renders; chromium runs the UI tests
# (driven by Playwright from the `test` extra; `playwright install` is never run);
# prometheus scrapes a real primary in tests/ops, whose promtool checks the alert rules.
# postgresql: the second store engine, tested against a real server.
needed=(git:git sshd:openssh-server ssh:openssh-client ssh-keygen:openssh-client
        systemd-analyze:systemd chromium:chromium prometheus:prometheus promtool:prometheus)
packages=()
for pair in "${needed[@]}"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || packages+=("${pair##*:}")
done
# PostgreSQL's server programs (initdb, pg_ctl) are not on PATH in Debian's package: the
# suite starts a throwaway server of its own from them (tests/pgcluster.py).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || packages+=(postgresql)
# libnss-wrapper: git over ssh as a job uid with no passwd entry (agent/git_auth.py).
compgen -G "/usr/lib/*/libnss_wrapper.so" >/dev/null || packages+=(libnss-wrapper)
if ((${#packages[@]})); then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${packages[@]}"
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[primary,controller,test]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/yamllint --strict .
PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg" .venv/bin/ansible-lint --nocolor -q
# pytest exits 5 when it collected nothing; set -e turns that, like any failure, into ours.
.venv/bin/python -m pytest -q "$@"
