"""`cifleet-primary`: init, serve, secret show|rotate, stop, demo, retention, prune."""

import argparse
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

from agent.protocol import NAME_RE
from primary.cli import retention as retention_cli
from primary.cli import store as store_cli
from primary.cli import tokens as token_cli
from primary.cli import users as user_cli
from primary.cli.listeners import ListenError
from primary.config import PrimaryConfig
from primary.errors import ApiError
from primary.fleet.initdir import InitError, initialise
from primary.server.bounds import FLAG_HELP, ServerBounds
from primary.server.public_cert import PublicCertError
from primary.store.engines import has_password
from primary.store.vault import VaultError


def _data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, required=True, help="the primary's data folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cifleet-primary", description="cifleet CI/CD primary")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="create a data dir: vault, CA, certificates, token, store")
    _data_dir(p)
    p.add_argument(
        "--hostname",
        action="append",
        default=[],
        help="name or address agents use to reach this primary (repeatable)",
    )
    p.add_argument(
        "--store",
        metavar="URL",
        help="keep the fleet in PostgreSQL (postgresql://USER@HOST/DATABASE; the password, "
        "if any, in ~/.pgpass or PGPASSFILE): an empty database gets a new fleet, one that "
        "holds a fleet is joined (give its --vault-key-file). Default: SQLite in the data dir",
    )
    p.add_argument(
        "--vault-key-file",
        type=Path,
        metavar="FILE",
        help="the fleet's vault key (another primary's DATA/vault.key), to join its database; "
        "or set CIFLEET_VAULT_KEY",
    )
    p.add_argument(
        "--name",
        help="this primary's name, and its built-in worker's (default: primary, or "
        "primary-XXXXXX for one that joins a fleet)",
    )

    p = sub.add_parser("serve", help="run the primary (public and agent listeners)")
    _data_dir(p)
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--api-port", type=int, default=8443, help="the public port; 0: any free port")
    p.add_argument(
        "--agent-port", type=int, default=8444, help="the agents' port; 0: any free port"
    )
    p.add_argument(
        "--agent-url",
        metavar="URL",
        type=_https_url,
        help="where agents reach this primary's agent port, as it tells them when several"
        " primaries share a fleet (default: https://BIND:AGENT_PORT, or the certificate's"
        " first name when bound to all addresses)",
    )
    p.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=60.0,
        help="seconds without contact before a worker is inactive and its runs lost",
    )
    p.add_argument(
        "--confirm-timeout",
        type=float,
        default=10.0,
        help="seconds an agent has to confirm an assignment",
    )
    p.add_argument(
        "--home-busy-wait",
        type=float,
        default=5.0,
        help="seconds a run waits for its pipeline's busy home worker before moving",
    )
    p.add_argument(
        "--primary-worker-slots",
        type=int,
        default=1,
        help="slots of the built-in worker; 0 turns it off",
    )
    p.add_argument(
        "--agent-threads",
        type=int,
        default=64,
        help="threads the agent port's requests run in (a held long poll takes none)",
    )
    p.add_argument(
        "--idle-poll-hold",
        type=float,
        default=300.0,
        help="seconds an idle agent's poll is held, at most (as long as the agent waits)",
    )
    p.add_argument(
        "--max-held-polls",
        type=int,
        default=16384,
        help="long polls held at once; past it a poll is answered with poll_after",
    )
    p.add_argument("--public-threads", type=int, default=16)
    p.add_argument(
        "--log-streams",
        type=int,
        default=8,
        help="live log streams of the web UI open at once (each holds a public thread)",
    )
    p.add_argument(
        "--log-stream-seconds",
        type=float,
        default=25.0,
        help="a live log stream ends after this long; the browser resumes where it stopped",
    )
    p.add_argument(
        "--max-static-file-bytes",
        type=int,
        default=256 << 20,
        help="largest static file a pipeline may have",
    )
    p.add_argument(
        "--max-artifact-bytes",
        type=int,
        default=64 << 20,
        help="largest tar of one job's artifacts the primary keeps",
    )
    p.add_argument(
        "--notify-retry-seconds",
        type=float,
        default=5.0,
        help="seconds before a notification that was not delivered is tried again"
        " (doubling each time, at most an hour)",
    )
    p.add_argument("--worker-cert-days", type=float, default=30.0)
    p.add_argument(
        "--cert-switch-over",
        type=float,
        default=60.0,
        help="seconds a worker's superseded certificate is still accepted after a renewal;"
        " used later, the worker's credentials are in conflict (a copied key)",
    )
    for bound in dataclasses.fields(ServerBounds):
        p.add_argument(
            "--" + bound.name.replace("_", "-"),
            type=type(bound.default),
            default=bound.default,
            help=f"{FLAG_HELP[bound.name]} (default %(default)s)",
        )
    p.add_argument(
        "--retention-interval",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="seconds between the janitor's passes of the retention policy; 0: none"
        " (default %(default)s)",
    )
    p.add_argument(
        "--builtin-work-dir",
        type=Path,
        metavar="DIR",
        help="the built-in worker's job workspaces (as root default"
        " /var/lib/cifleet-builtin/WORKER_ID: jobs must reach it, and the data dir is private)",
    )
    p.add_argument(
        "--public-cert",
        type=Path,
        metavar="FILE",
        help="a certificate chain (PEM) the public port serves to clients that ask for one of"
        " its DNS names, so browsers trust the UI; others get the fleet CA's; SIGHUP reloads",
    )
    p.add_argument("--public-key", type=Path, metavar="FILE", help="the key of --public-cert (PEM)")

    p = sub.add_parser("secret", help="show or rotate the worker secret")
    secret_sub = p.add_subparsers(dest="action", required=True)
    _data_dir(secret_sub.add_parser("show", help="print the worker secret"))
    _data_dir(secret_sub.add_parser("rotate", help="replace the worker secret"))

    p = sub.add_parser(
        "worker", help="list workers; lock, unlock, drain, flood, tag one, allow root jobs"
    )
    p.add_argument(
        "action", choices=["list", "lock", "unlock", "drain", "flood", "tags", "root-jobs"]
    )
    p.add_argument("name", nargs="?", help="worker name or id")
    p.add_argument("--tags", help="with `tags`: comma-separated new tags ('' for none)")
    root = p.add_mutually_exclusive_group()
    root.add_argument("--allow", action="store_true", help="with `root-jobs`: allow them")
    root.add_argument("--deny", action="store_true", help="with `root-jobs`: forbid them")
    _data_dir(p)

    token_cli.add_parser(sub, _data_dir)
    store_cli.add_parser(sub, _data_dir)
    user_cli.add_parser(sub, _data_dir)
    retention_cli.add_parser(sub, _data_dir)

    p = sub.add_parser("server-cert", help="re-issue the server certificate with new names")
    p.add_argument(
        "--hostname",
        action="append",
        required=True,
        help="name or address agents and admins use (repeatable)",
    )
    _data_dir(p)

    p = sub.add_parser("stop", help="stop a primary serving this data dir (SIGTERM)")
    _data_dir(p)

    p = sub.add_parser(
        "bootstrap-host",
        help="prepare a bare host for Ansible: install the controller's SSH key, check python3",
    )
    p.add_argument("target", metavar="user@host")
    p.add_argument("--port", type=int, default=22)
    p.add_argument("--key", type=Path, metavar="FILE", help="private key to log in with")
    p.add_argument(
        "--public-key",
        type=Path,
        metavar="FILE",
        help="public key to install (default ~/.ssh/id_ed25519.pub, id_ecdsa.pub, id_rsa.pub)",
    )
    p.add_argument(
        "--ask-password",
        action="store_true",
        help="prompt for the SSH password (or set CIFLEET_BOOTSTRAP_PASSWORD)",
    )
    p.add_argument(
        "--accept-new-host-key",
        action="store_true",
        help="accept and record the key of a host not yet in ~/.ssh/known_hosts",
    )

    p = sub.add_parser("demo", help="init, start a primary in the background, run an example")
    _data_dir(p)
    p.add_argument("--api-port", type=int, default=8443)
    p.add_argument("--agent-port", type=int, default=8444)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return COMMANDS[args.command](args)
    except (InitError, VaultError, ListenError, PublicCertError, OSError) as exc:
        print(f"cifleet-primary: {exc}", file=sys.stderr)
        return 2
    except ApiError as exc:  # the store refused (a database that is down, a full disk)
        print(f"cifleet-primary: {exc.message}", file=sys.stderr)
        return 2


def cmd_init(args) -> int:
    if args.store is not None and has_password(args.store):
        print(
            "cifleet-primary init: --store: leave the password out of the URL (it would show "
            "in the process list and the data dir's config); put it in ~/.pgpass or the file "
            "PGPASSFILE names",
            file=sys.stderr,
        )
        return 2
    if args.name is not None and not NAME_RE.match(args.name):
        print("cifleet-primary init: --name: 1-64 letters, digits, ., _ or -", file=sys.stderr)
        return 2
    if initialise(args.data_dir, args.hostname, args.store, args.vault_key_file, args.name):
        print(f"initialised {args.data_dir.absolute()}")
        print(f"  fleet CA certificate: {args.data_dir.absolute() / 'ca.pem'}")
        print(f"  admin API token:      {args.data_dir.absolute() / 'admin.token'}")
    else:
        print(f"{args.data_dir.absolute()} is already initialised; nothing changed")
    return 0


def _https_url(value: str) -> str:
    from agent.primaries import valid_url

    if not valid_url(value):
        raise argparse.ArgumentTypeError(f"not an https://HOST[:PORT] URL: {value!r}")
    return value


def cmd_serve(args) -> int:
    from primary.cli.serve import serve

    if (args.public_cert is None) != (args.public_key is None):
        print("cifleet-primary serve: give --public-cert with --public-key", file=sys.stderr)
        return 2
    config = PrimaryConfig(
        data_dir=args.data_dir,
        bind=args.bind,
        api_port=args.api_port,
        agent_port=args.agent_port,
        heartbeat_timeout=args.heartbeat_timeout,
        confirm_timeout=args.confirm_timeout,
        home_busy_wait=args.home_busy_wait,
        primary_worker_slots=args.primary_worker_slots,
        agent_url=args.agent_url,
        agent_threads=args.agent_threads,
        max_held_polls=args.max_held_polls,
        idle_poll_hold=args.idle_poll_hold,
        public_threads=args.public_threads,
        log_streams=args.log_streams,
        log_stream_seconds=args.log_stream_seconds,
        max_static_file_bytes=args.max_static_file_bytes,
        max_artifact_bytes=args.max_artifact_bytes,
        worker_cert_days=args.worker_cert_days,
        cert_switch_over=args.cert_switch_over,
        notify_retry_seconds=args.notify_retry_seconds,
        retention_interval=args.retention_interval,
        builtin_work_dir=args.builtin_work_dir.absolute() if args.builtin_work_dir else None,
        public_cert=args.public_cert.absolute() if args.public_cert else None,
        public_key=args.public_key.absolute() if args.public_key else None,
    )
    bounds = ServerBounds(
        **{b.name: getattr(args, b.name) for b in dataclasses.fields(ServerBounds)}
    )
    return serve(config, bounds)


def cmd_secret(args) -> int:
    from primary.context import open_primary

    primary = open_primary(PrimaryConfig(data_dir=args.data_dir))
    if args.action == "show":
        print(primary.vault.get("worker_secret"))
    else:
        from primary.fleet.registration import rotate_secret

        rotate_secret(primary)
        print("the worker secret was rotated; registered workers stay connected")
        print("show the new one with: cifleet-primary secret show --data-dir DIR")
    return 0


def cmd_worker(args) -> int:
    import json

    from primary.cli.client import AdminClient, ApiFailure
    from primary.store.datadir import DataDir

    data = DataDir(args.data_dir.absolute())
    try:
        url = json.loads(data.serve_info.read_text())["api_url"]
    except FileNotFoundError:
        print(f"no primary is serving {data.root}", file=sys.stderr)
        return 1
    client = AdminClient(url, data.ca_cert, data.admin_token.read_text().strip())
    try:
        if args.action == "list":
            for w in client.json("GET", "/api/v1/workers")["workers"]:
                print(_worker_line(w))
            return 0
        if not args.name:
            print(f"cifleet-primary worker {args.action}: name a worker", file=sys.stderr)
            return 2
        if args.action == "tags":
            if args.tags is None:
                print("cifleet-primary worker tags: give --tags a,b", file=sys.stderr)
                return 2
            tags = [t for t in args.tags.split(",") if t]
            worker = client.json("PUT", f"/api/v1/workers/{args.name}/tags", {"tags": tags})
        elif args.action == "root-jobs":
            if not (args.allow or args.deny):
                print("cifleet-primary worker root-jobs: give --allow or --deny", file=sys.stderr)
                return 2
            body = {"allowed": args.allow}
            worker = client.json("PUT", f"/api/v1/workers/{args.name}/root-jobs", body)
        else:
            worker = client.json("POST", f"/api/v1/workers/{args.name}/{args.action}")
    except ApiFailure as exc:
        print(f"cifleet-primary worker {args.action}: {exc}", file=sys.stderr)
        return 2
    print(_worker_line(worker))
    return 0


def _worker_line(w: dict) -> str:
    tags = ",".join(w["tags"]) or "-"
    root = "  root-jobs=allowed" if w.get("root_jobs") else ""
    return (
        f"{w['name']}  {w['state']}  tags={tags}  slots={w['slots_used']}/{w['slots']}{root}"
        f"  jobs: {w.get('job_identity_text', '?')}"
    )


def cmd_server_cert(args) -> int:
    from agent.home import write_atomic
    from primary.context import open_primary
    from primary.fleet.initdir import DEFAULT_HOSTNAMES

    primary = open_primary(PrimaryConfig(data_dir=args.data_dir))
    names = list(dict.fromkeys([*args.hostname, *DEFAULT_HOSTNAMES]))
    cert, key = primary.ca.issue_server(names)
    primary.vault.set("server_key", key)  # the key first: a cert without its key is useless
    write_atomic(primary.data.server_cert, cert.encode(), 0o644)
    print(f"issued a server certificate for {', '.join(names)}")
    print("restart the primary (cifleet-primary stop, then serve) to use it; agents keep")
    print("trusting it, since it comes from the same fleet CA")
    return 0


def cmd_stop(args) -> int:
    pidfile = args.data_dir / "primary.pid"
    try:
        pid = int(pidfile.read_text())
    except (FileNotFoundError, ValueError):
        print(f"no primary is serving {args.data_dir} (no pid file)", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pidfile.unlink(missing_ok=True)
        print(f"no primary is serving {args.data_dir} (stale pid file removed)", file=sys.stderr)
        return 1
    print(f"sent SIGTERM to the primary (pid {pid})")
    return 0


def cmd_bootstrap_host(args) -> int:
    try:
        from primary.cli.bootstrap import BootstrapError, Target, bootstrap, password_from
    except ImportError as exc:
        print(
            f"cifleet-primary bootstrap-host needs the controller extra "
            f"(pip install -e '.[controller]'): {exc}",
            file=sys.stderr,
        )
        return 2

    try:
        target = Target.parse(args.target, args.port)
        password = password_from(args.ask_password)
        if password is None and args.key is None:
            raise BootstrapError(
                "give --ask-password (or set CIFLEET_BOOTSTRAP_PASSWORD) or --key FILE"
            )
        line, done = bootstrap(
            target,
            password=password,
            key_file=args.key,
            public_key_file=args.public_key,
            accept_new_host_key=args.accept_new_host_key,
        )
    except BootstrapError as exc:
        print(f"cifleet-primary bootstrap-host: {exc}", file=sys.stderr)
        return 2
    for step in done:
        print(f"# {step}")
    print("# add this line to the [workers] group of your inventory:")
    print(line)
    return 0


def cmd_demo(args) -> int:
    from primary.cli.demo import demo

    return demo(args.data_dir, args.api_port, args.agent_port)


COMMANDS = {
    "init": cmd_init,
    "serve": cmd_serve,
    "secret": cmd_secret,
    "worker": cmd_worker,
    "token": token_cli.run,
    "store": store_cli.run,
    "user": user_cli.run,
    "retention": retention_cli.run,
    "prune": retention_cli.run,
    "server-cert": cmd_server_cert,
    "stop": cmd_stop,
    "demo": cmd_demo,
    "bootstrap-host": cmd_bootstrap_host,
}

if __name__ == "__main__":
    sys.exit(main())
