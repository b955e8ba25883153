"""`cifleet-primary demo`: the README's first command. Initialises a data dir, starts a
primary in the background (with its built-in worker), runs an example pipeline, prints its
log live, then says where to look: the web UI's address and login (an admin made for the
demo, its password in a file of the data dir, never printed), how to make a browser trust
the fleet CA, and how to stop."""

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

from agent.home import write_atomic
from primary.cli.client import AdminClient, ApiFailure
from primary.config import PrimaryConfig
from primary.fleet.initdir import initialise
from primary.fleet.users import UserError, create_user
from primary.store.datadir import DataDir

DEMO_USER = "admin"
# The demo admin's password, 0600 in the data dir (as Jenkins' initialAdminPassword).
PASSWORD_FILE = "ui-admin-password"

EXAMPLE_PIPELINE = """\
name: hello
env:
  GREETING: hello from cifleet
jobs:
  - name: build
    steps:
      - echo "$GREETING, building in $CIFLEET_WORKSPACE"
      - for i in 1 2 3; do echo "compiling part $i"; sleep 0.5; done
  - name: test
    needs: [build]
    steps:
      - echo "running tests on $(uname -n)"
      - sleep 1; echo "all tests passed"
  - name: package
    needs: [test]
    steps:
      - echo "packaged run $CIFLEET_RUN_ID" > artifact.txt && cat artifact.txt
"""


def _start_primary(data: DataDir, api_port: int, agent_port: int) -> subprocess.Popen:
    log_path = data.root / "primary.log"
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "primary",
                "serve",
                "--data-dir",
                str(data.root),
                "--api-port",
                str(api_port),
                "--agent-port",
                str(agent_port),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,  # keeps running after the demo command returns
        )


class PrimaryExited(Exception):
    """The primary the demo started exited before it served."""

    def __init__(self, status: int):
        super().__init__(f"the primary exited with status {status} before it served")
        self.status = status


def _wait_until_serving(client: AdminClient, process: subprocess.Popen, timeout: float) -> None:
    """Until the new primary answers /healthz; a primary that exits first (a port taken,
    say) ends the wait at once, not after the timeout."""
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        try:
            client.wait_healthy(0.5)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise
    raise PrimaryExited(process.returncode)


def _last_lines(path: Path, count: int = 5) -> str:
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(lines[-count:])


def _wait_for_builtin_worker(client: AdminClient, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = client.json("GET", "/api/v1/workers")["workers"]
        if any(w["name"] == "primary" and w["state"] == "active" for w in workers):
            return
        time.sleep(0.2)
    raise TimeoutError("the built-in worker did not come up; see primary.log in the data dir")


def _demo_login(root: Path) -> Path | None:
    """An admin for the web UI, made once; its password goes to a 0600 file. None when a
    user of that name was made otherwise (then its password is not ours to know)."""
    from primary.context import open_primary

    path = root / PASSWORD_FILE
    if path.exists():
        return path
    password = secrets.token_urlsafe(18)
    store = open_primary(PrimaryConfig(data_dir=root)).store
    try:
        create_user(store, DEMO_USER, "admin", password)
    except UserError:
        return None
    write_atomic(path, (password + "\n").encode(), 0o600)
    return path


def _ui_lines(root: Path, url: str, ca: Path) -> str:
    path = _demo_login(root)
    if path is not None:
        login = f"name {DEMO_USER}, password: cat {path}"
    else:
        login = (
            f"a user {DEMO_USER!r} exists already; make another with"
            f" cifleet-primary user create NAME --role admin --data-dir {root}"
        )
    home = Path(os.environ.get("HOME", "~"))
    return f"""web UI:         {url}/
  log in:       {login}
  trust the fleet CA first, or the browser refuses the page (NET::ERR_CERT_AUTHORITY_INVALID):
    Chromium/Chrome on Linux: certutil -d sql:{home}/.pki/nssdb -A -t C,, -n cifleet -i {ca}
                  (certutil is in libnss3-tools; or Settings > Privacy and security > Security
                  > Manage certificates > Authorities > Import {ca}, trust it for websites)
    Firefox:      Settings > Privacy & Security > Certificates > View Certificates >
                  Authorities > Import {ca}, trust it to identify websites
    curl, Python: --cacert {ca} (as below)
  or serve the UI with a certificate your browsers trust already (a company CA's, ACME's):
    cifleet-primary serve --public-cert FULLCHAIN.pem --public-key KEY.pem (docs/ui.md)"""


def demo(root: Path, api_port: int, agent_port: int) -> int:
    root = root.absolute()
    if initialise(root, []):
        print(f"initialised a primary in {root}")
    data = DataDir(root)
    url = f"https://127.0.0.1:{api_port}"
    client = AdminClient(url, data.ca_cert, data.admin_token.read_text().strip())
    try:
        client.wait_healthy(0.5)
        print(f"a primary is already serving {root}")
    except TimeoutError:
        process = _start_primary(data, api_port, agent_port)
        try:
            _wait_until_serving(client, process, 30)
        except PrimaryExited as exited:
            log_path = root / "primary.log"
            print(f"cifleet-primary: {exited}; the end of {log_path}:", file=sys.stderr)
            print(_last_lines(log_path), file=sys.stderr)
            return exited.status or 1
        print(f"started a primary in the background (log: {root / 'primary.log'})")
    _wait_for_builtin_worker(client, 30)
    client.json(
        "POST", "/api/v1/pipelines", raw=EXAMPLE_PIPELINE.encode(), content_type="application/yaml"
    )
    run_id = client.json("POST", "/api/v1/pipelines/hello/runs")["id"]
    print(f"triggered run {run_id} of pipeline 'hello'; its log as it arrives:\n")
    offset = 0
    while True:
        status, headers, body = client.request("GET", f"/api/v1/runs/{run_id}/log?offset={offset}")
        if status != 200:
            raise ApiFailure(status, body.decode(errors="replace"))
        sys.stdout.buffer.write(body)
        sys.stdout.flush()
        offset += len(body)
        if headers.get("x-log-complete") == "true":
            break
        time.sleep(0.2)
    run = client.json("GET", f"/api/v1/runs/{run_id}")
    token_file = data.admin_token
    print(f"""
run {run_id} finished: {run["state"]}

where to look:
{_ui_lines(root, url, data.ca_cert)}
  data folder:  {root}
  primary log:  {root / "primary.log"}
  status:       curl --cacert {data.ca_cert} -H "Authorization: Bearer $(cat {token_file})" \\
                  {url}/api/v1/status
  this run:     curl --cacert {data.ca_cert} -H "Authorization: Bearer $(cat {token_file})" \\
                  {url}/api/v1/runs/{run_id}
how to stop:    .venv/bin/cifleet-primary stop --data-dir {root}
""")
    return 0 if run["state"] == "success" else 1
