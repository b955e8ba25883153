"""cifleet-agent: register this host with a primary, run the worker loop, or change this
worker's record on the primary.

Exit codes: 0 ok, 2 usage/registration/config error, 3 the primary no longer knows this
worker, 5 the primary refuses every certificate of this worker because a copy of its key
was used (a service manager should restart it after neither). `check` adds 4: not
registered.
"""

import argparse
import logging
import signal
import socket
import ssl
import sys
from pathlib import Path

from agent import __version__
from agent.identity import DEFAULT_JOB_UIDS

EXIT_ERROR = 2
EXIT_UNKNOWN_WORKER = 3
EXIT_CREDENTIALS_CONFLICT = 5
TAGS_BY_ADMIN = (
    "a worker's tags are set by an admin, not by the worker: the admin API (PUT"
    " /api/v1/workers/NAME/tags), `cifleet-primary worker tags NAME --tags a,b`, the Workers"
    " page, or update-worker.yml with the tags in the inventory"
)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cifleet-agent", description="cifleet worker agent")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    reg = sub.add_parser("register", help="register this host with the primary")
    reg.add_argument(
        "--primary",
        required=True,
        metavar="URL",
        help="the primary's public URL, e.g. https://ci.example:8443",
    )
    reg.add_argument(
        "--ca-file",
        required=True,
        type=Path,
        metavar="F",
        help="fleet CA certificate (PEM) that signed the primary's certificate",
    )
    reg.add_argument(
        "--secret-file",
        required=True,
        type=Path,
        metavar="F",
        help="file holding the worker secret",
    )
    reg.add_argument("--name", default=None, help="worker name (default: short host name)")
    reg.add_argument("--tags", default="", help="comma-separated tags")
    reg.add_argument("--slots", type=int, default=1, help="runs at once (default 1)")
    reg.add_argument("--home", required=True, type=Path, metavar="DIR", help="agent home")
    reg.add_argument(
        "--work-dir",
        type=Path,
        metavar="DIR",
        help="where the pipelines' workspaces go (default HOME/workspaces); as root, jobs"
        " must be able to pass through every folder above it",
    )
    reg.add_argument(
        "--job-uids",
        metavar="START-END",
        help="as root: the uids pipelines' jobs run as, one per pipeline workspace"
        f" (default {DEFAULT_JOB_UIDS[0]}-{DEFAULT_JOB_UIDS[1]})",
    )
    reg.add_argument(
        "--job-user",
        metavar="NAME",
        help="as root: run every job as this existing user instead (pipelines then share"
        " one identity; docs/security.md)",
    )
    reg.set_defaults(func=_register)

    run = sub.add_parser("run", help="run the worker loop until stopped")
    run.add_argument("--home", required=True, type=Path, metavar="DIR", help="agent home")
    run.add_argument(
        "--daemon",
        action="store_true",
        help="detach (for hosts without systemd); needs --pidfile and --log-file",
    )
    run.add_argument("--pidfile", type=Path, metavar="F", help="with --daemon: write the pid here")
    run.add_argument("--log-file", type=Path, metavar="F", help="with --daemon: append logs here")
    run.add_argument(
        "--metrics-listen",
        metavar="ADDR",
        help="serve Prometheus metrics at http://ADDR/metrics (HOST:PORT, [IPV6]:PORT or :PORT;"
        " no TLS, no token: bind it to a trusted network). Off by default",
    )
    run.add_argument(
        "--primaries",
        default="",
        metavar="URLS",
        help="comma-separated agent URLs (https://HOST:PORT) of the fleet's other primaries, to"
        " move to when the registered one cannot be reached (the primaries also tell the agent)",
    )
    run.add_argument(
        "--workspace-max-bytes",
        metavar="SIZE",
        help="cap on the disk the pipelines' workspaces take (500M, 20G, 1T): past it, the"
        " least recently used are deleted after a run ends. Off by default",
    )
    run.set_defaults(func=_run)

    chk = sub.add_parser(
        "check",
        help="is this home registered and its certificate accepted? "
        "(exit 0 yes, 3 refused or expired, 4 not registered, 2 other error)",
    )
    chk.add_argument("--home", required=True, type=Path, metavar="DIR", help="agent home")
    chk.set_defaults(func=_check)

    upd = sub.add_parser(
        "update-worker", help="change this worker's record on the primary (drain, slots)"
    )
    upd.add_argument("--home", required=True, type=Path, metavar="DIR", help="agent home")
    mode = upd.add_mutually_exclusive_group()
    mode.add_argument("--drain", action="store_true", help="take no new runs (current runs finish)")
    mode.add_argument("--flood", action="store_true", help="take new runs again")
    upd.add_argument("--tags", default=None, help="refused: tags are set by an admin")
    upd.add_argument("--slots", type=int, default=None, help="runs at once")
    upd.set_defaults(func=_update_worker)
    return parser


def _register(args: argparse.Namespace) -> int:
    from agent.home import ConfigError, is_registered, load_config
    from agent.identity import parse_uid_range
    from agent.registration import RegistrationError, read_secret, register

    if is_registered(args.home):
        try:
            config = load_config(args.home)
        except ConfigError as e:
            return _fail(str(e))
        print(f"already registered as {config['name']} ({config['worker_id']}); nothing changed")
        return 0
    name = args.name or socket.gethostname().split(".")[0]
    tags = [t.strip() for t in args.tags.split(",") if t.strip()]
    jobs: dict = {}
    try:
        if args.work_dir is not None:
            jobs["work_dir"] = str(args.work_dir.absolute())
        if args.job_uids is not None:
            jobs["job_uids"] = list(parse_uid_range(args.job_uids))
        if args.job_user:
            jobs["job_user"] = args.job_user
    except ValueError as e:
        return _fail(str(e))
    try:
        secret = read_secret(args.secret_file)
        config = register(
            args.primary, args.ca_file, secret, name, tags, args.slots, args.home, jobs
        )
    except RegistrationError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"cannot write the agent home {args.home}: {e}")
    print(
        f"registered as {config['name']} ({config['worker_id']}); agent URL {config['agent_url']}"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    from agent.home import ConfigError, load_config
    from agent.service import daemonize, pidfile_process_alive, remove_pidfile

    if args.daemon:
        if args.pidfile is None or args.log_file is None:
            return _fail("--daemon needs --pidfile and --log-file")
        pid = pidfile_process_alive(args.pidfile)
        if pid is not None:
            print(f"already running (pid {pid}); nothing changed")
            return 0
        try:
            load_config(args.home)  # report a bad home here, before detaching
        except ConfigError as e:
            return _fail(str(e))
    from agent.primaries import valid_url

    bad = [u for u in _url_list(args.primaries) if not valid_url(u)]
    if bad:
        return _fail(f"--primaries: not an https://HOST[:PORT] URL: {bad[0]}")
    cap = None
    if args.workspace_max_bytes is not None:
        from agent.workspace_cap import parse_size

        try:
            cap = parse_size(args.workspace_max_bytes)
        except ValueError as e:
            return _fail(f"--workspace-max-bytes: {e}")
    listener = None
    if args.metrics_listen is not None:
        from agent.metrics import bind

        # Bound here, before --daemon detaches: a taken port is the caller's error to see.
        try:
            listener = bind(args.metrics_listen)
        except (ValueError, OSError) as e:
            return _fail(f"--metrics-listen {args.metrics_listen}: {e}")
    if args.daemon:
        try:
            daemonize(args.pidfile, args.log_file)
        except OSError as e:
            return _fail(f"cannot start the daemon: {e}")
    try:
        return _run_agent(args.home, listener, _url_list(args.primaries), cap)
    finally:
        if listener is not None:
            listener.close()
        if args.daemon:
            remove_pidfile(args.pidfile)


def _url_list(value: str) -> list[str]:
    return [u.strip() for u in value.split(",") if u.strip()]


def _run_agent(
    home: Path,
    metrics_socket: socket.socket | None = None,
    primaries: list[str] | None = None,
    workspace_max_bytes: int | None = None,
) -> int:
    from agent.home import ConfigError
    from agent.metrics import MetricsServer
    from agent.worker import Agent

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        agent = Agent(home, primaries=primaries, workspace_max_bytes=workspace_max_bytes)
    except ConfigError as e:
        return _fail(str(e))
    except (ssl.SSLError, OSError) as e:
        return _fail(f"cannot load the worker certificate or key from {home}: {e}")
    _install_signal_handlers(agent)
    metrics = MetricsServer(metrics_socket, agent.snapshot).start() if metrics_socket else None
    try:
        agent.run()
    except ConfigError as e:  # another agent runs with this home, or jobs have no identity
        return _fail(str(e))
    finally:
        if metrics is not None:
            metrics.close()
    if agent.in_conflict:
        return EXIT_CREDENTIALS_CONFLICT
    return EXIT_UNKNOWN_WORKER if agent.unknown_worker else 0


def _check(args: argparse.Namespace) -> int:
    from agent.service import CHECK_OK, check

    code, message = check(args.home)
    print(message, file=sys.stdout if code == CHECK_OK else sys.stderr)
    return code


def _update_worker(args: argparse.Namespace) -> int:
    from agent.home import ConfigError
    from agent.update_worker import UpdateError, check_slots, describe, update_worker

    changes: dict = {}
    try:
        if args.drain or args.flood:
            changes["draining"] = args.drain
        if args.tags is not None:
            return _fail(TAGS_BY_ADMIN)
        if args.slots is not None:
            changes["slots"] = check_slots(args.slots)
        if not changes:
            return _fail("nothing to change: give --drain, --flood or --slots")
        worker = update_worker(args.home, changes)
    except (UpdateError, ConfigError) as e:
        return _fail(str(e))
    print(describe(worker))
    return 0


def _install_signal_handlers(agent) -> None:
    """First SIGTERM/SIGINT: drain. A second one, or SIGQUIT: cancel the jobs and stop.

    The handlers only set flags (see Agent.request_drain): no logging, no locks.
    """
    terms = 0

    def on_term(signum, frame) -> None:
        nonlocal terms
        terms += 1
        if terms == 1:
            agent.request_drain()
        else:
            agent.request_force_stop()

    def on_quit(signum, frame) -> None:
        agent.request_force_stop()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGQUIT, on_quit)


def _fail(message: str) -> int:
    print(f"cifleet-agent: error: {message}", file=sys.stderr)
    return EXIT_ERROR
