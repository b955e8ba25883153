"""Fixtures that start real processes: a primary and agents on loopback, a PostgreSQL
server for the session (started when a test first needs it), and a guard that fails the
run when a test left one of its processes running."""

import pytest
from fleet import (
    Agent,
    Primary,
    init_primary,
    kill_workspace_processes,
    passable,
    register_agent,
    stop_agents,
    use_passable_basetemp,
    wait_for,
)
from leftovers import leftover_processes
from pgcluster import PgCluster


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    use_passable_basetemp(config)


@pytest.fixture
def tmp_path(tmp_path):
    """pytest's tmp_path, which jobs under their own uids may pass through (fleet.passable)."""
    return passable(tmp_path)


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_suite(tmp_path_factory):
    """After every other fixture is torn down: no process this run started (one whose
    command line or environment names its tmp dir: primaries, agents, jobs, sshd, ssh
    masters) may still run. Any found is killed, and the run fails."""
    root = tmp_path_factory.getbasetemp()
    yield
    leftovers = leftover_processes(root)
    if leftovers:
        pytest.fail("still running after the tests (killed now):\n" + "\n".join(leftovers))


@pytest.fixture(scope="session")
def pg_cluster():
    """One PostgreSQL server for the whole session, removed at its end (failed or not)."""
    with PgCluster.running() as cluster:
        yield cluster


@pytest.fixture
def pg_url(pg_cluster) -> str:
    """The URL of a new empty database in the session's server."""
    return pg_cluster.create_database()


@pytest.fixture
def engine(request) -> str:
    """The store a test's primary uses: sqlite unless the test is parametrised (both_engines)."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def store_url(engine, request) -> str | None:
    """What `init --store` gets for `engine`: None for SQLite, else a new database's URL."""
    return None if engine == "sqlite" else request.getfixturevalue("pg_url")


@pytest.fixture
def sqlite_fleet_setup():
    """What the `primary` fixture's SQLite fleets hold beyond `init`'s: a function of the
    data dir, or None. A folder's conftest may override it (tests/ui adds its users); it
    runs once per session, on the template every such fleet is copied from."""
    return None


@pytest.fixture
def fleet_root(tmp_path):
    return tmp_path


@pytest.fixture
def primary(fleet_root, store_url, request) -> Primary:
    """A serving primary with a short heartbeat timeout and no built-in worker, on the
    test's engine, plus serve flags a test may give: @pytest.mark.parametrize("primary",
    [("--flag", "v")], indirect=True)."""
    p = init_primary(
        fleet_root,
        "--heartbeat-timeout",
        "6",
        "--primary-worker-slots",
        "0",
        *getattr(request, "param", ()),
        store=store_url,
        sqlite_setup=request.getfixturevalue("sqlite_fleet_setup"),
    )
    try:
        p.start()
        yield p
    finally:
        p.close()


@pytest.fixture
def start_agent(primary, fleet_root):
    """Register and start an agent; every agent is stopped after the test, and the jobs it
    left running (they run in their own sessions) are killed."""
    agents: list[Agent] = []

    def start(
        name: str,
        tags: str = "",
        slots: int = 1,
        register_args: tuple[str, ...] = (),
        prefix: tuple[str, ...] = (),
    ) -> Agent:
        """`register_args`: more `cifleet-agent register` flags; `prefix`: what runs the
        agent (fleet.AS_NOBODY)."""
        result = register_agent(primary, fleet_root, name, tags, slots, args=register_args)
        assert result.returncode == 0, result.stderr
        agent = Agent(
            name=name,
            home=fleet_root / name,
            log_path=fleet_root / f"{name}.log",
            prefix=prefix,
        )
        agent.start()
        agents.append(agent)
        wait_for(
            lambda: (w := primary.worker(name)) and w["state"] == "active",
            30,
            f"worker {name} to be active",
        )
        return agent

    yield start
    stop_agents(agents)
    for agent in agents:
        kill_workspace_processes(agent.home)
