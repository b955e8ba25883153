"""Read helpers for the Workers and Settings pages: the service data plus what only the UI
shows (pipelines by home worker, the commands to add a worker)."""

import shlex
from pathlib import Path

from primary.context import Primary
from primary.fleet import workers
from primary.timestamps import iso


def homes_by_worker(primary: Primary) -> dict[str, list[str]]:
    """Pipeline names by the id of their home worker."""
    homes: dict[str, list[str]] = {}
    for row in primary.store.query(
        "SELECT name, home_worker_id FROM pipelines WHERE home_worker_id IS NOT NULL ORDER BY name"
    ):
        homes.setdefault(row["home_worker_id"], []).append(row["name"])
    return homes


def workers_with_homes(primary: Primary) -> list[dict]:
    """Every worker as the admin API describes it, with `homes`: its pipelines."""
    homes = homes_by_worker(primary)
    return [{**w, "homes": homes.get(w["id"], [])} for w in workers.list_workers(primary)]


def worker_attempts(primary: Primary, worker_id: str, limit: int) -> list[dict]:
    """The newest attempts on a worker (what it ran, and how each ended; `outcome` None
    while it goes on), with each run's pipeline and state."""
    rows = primary.store.query(
        "SELECT a.run_id, a.attempt, a.assigned_at, a.ended_at, a.outcome, r.pipeline, r.state"
        " FROM attempts a JOIN runs r ON r.id = a.run_id WHERE a.worker_id = ?"
        " ORDER BY a.assigned_at DESC, a.run_id DESC LIMIT ?",
        (worker_id, limit),
    )
    return [
        {
            **dict(r),
            "assigned_at": iso(r["assigned_at"]),
            "ended_at": iso(r["ended_at"]),
            "seconds": (r["ended_at"] - r["assigned_at"]) if r["ended_at"] else None,
        }
        for r in rows
    ]


def parse_tags(text: str) -> list[str]:
    """Tags as typed in the form: separated by commas and/or spaces."""
    return [t for t in text.replace(",", " ").split() if t]


def add_worker_commands(primary_url: str, ca_file: Path, token_file: Path) -> dict[str, str]:
    """What an operator runs to add a worker, with this primary's URL and files filled in:
    by Ansible (docs/ansible.md) and by hand on the worker host."""
    q = shlex.quote
    inventory = (
        "cp inventory.example inventory\n"
        "# then set these in [workers:vars] of inventory, and list your hosts under [workers]:\n"
        f"cifleet_worker_primary_url={primary_url}\n"
        f"cifleet_worker_ca_file={ca_file}\n"
        "cifleet_worker_secret_source=api\n"
        f"cifleet_worker_admin_token_file={token_file}\n"
    )
    ansible = (
        "# a bare host with password login only: install your SSH key first\n"
        "cifleet-primary bootstrap-host root@HOST --ask-password --accept-new-host-key\n"
        "ansible-playbook -i inventory playbooks/add-worker.yml"
    )
    manual = (
        "# on the worker host, with ca.pem copied from this primary and the secret in a\n"
        "# 0600 file (never on the command line):\n"
        f"cifleet-agent register --primary {q(primary_url)} --ca-file ca.pem \\\n"
        "    --secret-file secret.txt --name builder-1 --tags linux --slots 2 \\\n"
        "    --home /var/lib/cifleet\n"
        "cifleet-agent run --home /var/lib/cifleet"
    )
    return {"inventory": inventory, "ansible": ansible, "manual": manual}
