#!/usr/bin/env bash
# Installs everything the test suite needs (system packages too) and runs the whole suite.
# Works on a fresh Debian/Ubuntu machine with Python 3.11; run it from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the suite uses, as "command:package"; each is installed only when its
# command is missing (as root, or with sudo when present).
# ssh/ssh-keygen: the playbook tests reach their hosts over SSH; mmdebstrap and
# systemd-nspawn (below) make those hosts, systemd containers on a minimal Debian tree built
# once per machine (tests/containers.py); sshd serves the git-over-ssh repositories
# (tests/sshd.py); systemd-analyze verifies the unit file the role renders; chromium runs
# the UI tests (driven by Playwright from the `test` extra; `playwright install` is never
# run); prometheus scrapes a real primary in tests/ops, whose promtool checks the alert
# rules; postgresql: the second store engine, tested against a real server; nft drops a
# vanished host's packets in tests/faults/test_idle_host_gone.py.
needed=(git:git ip:iproute2 nft:nftables sshd:openssh-server ssh:openssh-client ssh-keygen:openssh-client
        mmdebstrap:mmdebstrap systemd-analyze:systemd chromium:chromium prometheus:prometheus promtool:prometheus)
# Without its recommends: libnss-mymachines would add itself to /etc/nsswitch.conf.
needed_bare=(systemd-nspawn:systemd-container)

SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
updated=""
install_missing() {  # install_missing [apt-get options...] -- command:package...
  local options=() packages=()
  while [ "$1" != "--" ]; do options+=("$1"); shift; done
  shift
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || packages+=("${pair##*:}")
  done
  ((${#packages[@]})) || return 0
  [ -n "$updated" ] || { $SUDO apt-get update -q; updated=1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${options[@]}" "${packages[@]}"
}
install_missing -- "${needed[@]}"
install_missing --no-install-recommends -- "${needed_bare[@]}"
# PostgreSQL's server programs (initdb, pg_ctl) are not on PATH in Debian's package: the
# suite starts a throwaway server of its own from them (tests/pgcluster.py).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || install_missing -- initdb:postgresql

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[primary,controller,test]'
# pip compiled the dependencies, not this editable project: with PYTHONDONTWRITEBYTECODE
# set (this machine's environment sets it) every primary, agent and CLI call the tests start would
# compile it again, about 0.15 s each.
.venv/bin/python -m compileall -q primary agent
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/yamllint --strict .
PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg" .venv/bin/ansible-lint --nocolor -q
# pytest exits 5 when it collected nothing; set -e turns that, like any failure, into ours.
# The slowest tests are listed at the end: the suite has a 25-minute budget to keep.
.venv/bin/python -m pytest -q --durations=40 "$@"
