"""`cifleet-primary` under yappi, a profiler that follows every thread (the event loop's and
the services' threads, where py-spy is not installable): CPU time per function, from
SIGUSR1 to SIGUSR2, written then to CIFLEET_BENCH_PROFILE as text (functions by CPU time
of their own, and with their callees).

    .venv/bin/pip install yappi   # into the venv only; not a dependency of cifleet
    CIFLEET_BENCH_PROFILE=FILE python bench/yappi_primary.py serve --data-dir DIR ...

The profiler costs CPU (every call is traced): read shares, not absolute figures.
"""

import io
import os
import signal

import yappi


def _start(signum, frame) -> None:
    yappi.clear_stats()
    yappi.start(builtins=False, profile_threads=True)


def _dump(signum, frame) -> None:
    yappi.stop()
    stats = yappi.get_func_stats()
    out = io.StringIO()
    for key, title in (("tsub", "own CPU time"), ("ttot", "CPU time with callees")):
        out.write(f"== by {title}\n")
        stats.sort(key, "desc")
        stats.print_all(
            out=out,
            columns={0: ("name", 90), 1: ("ncall", 10), 2: ("tsub", 9), 3: ("ttot", 9)},
        )
        out.write("\n")
    total = sum(t.ttot for t in yappi.get_thread_stats())
    out.write(f"threads' CPU in all: {total:.3f} s\n")
    with open(os.environ["CIFLEET_BENCH_PROFILE"], "w") as f:
        f.write(out.getvalue())


if __name__ == "__main__":
    yappi.set_clock_type("cpu")
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _dump)
    from primary.cli.main import main

    raise SystemExit(main())
