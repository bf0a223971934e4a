#!/usr/bin/env python3
"""The Celery side of multiprocess-bench's group `cluster`: Celery on the harness's Redis.

Run by the Rust harness (bench/src/cluster.rs) with the interpreter of the virtual environment that
setup-celery.sh makes, one figure per invocation:

    bench_celery.py celery-apply --redis URL                  [plan]
    bench_celery.py celery-map   --redis URL --chunksize N    [plan]
    bench_celery.py celery-cpu   --redis URL --spin-us US     [plan]

    plan: [--warmup W] [--samples S] [--ops N] [--workers N] [--pool prefork|solo]

Each invocation starts its own Celery workers (`celery -A bench_celery worker`, --workers of them,
default 1 for celery-apply and 2 otherwise, each `--pool=prefork --concurrency=1`, with
`--without-gossip --without-mingle --without-heartbeat`) against URL, which is both the broker and
the result backend; waits until every one answers a ping; runs W untimed batches, then S timed
batches of N operations; stops the workers (SIGTERM to each worker's process group, then SIGKILL
after 10 s); and prints one JSON object on stdout:
{"figure": ..., "seconds_per_op": [one value per timed batch], "celery": version}.

- celery-apply: one op is `ident.delay(i).get()`.
- celery-map: one op is an item of `ident.chunks(zip(range(N)), C).group().apply_async().get()`,
  Celery's way of mapping a task over items C at a time (N / C tasks of C calls each).
- celery-cpu: one op is a task of `group(spin_us.s(US) for _ in range(N)).apply_async().get()`,
  each task spinning US microseconds of wall time.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from celery import Celery, group

HERE = os.path.dirname(os.path.abspath(__file__))
URL_ENV = "MP_BENCH_REDIS_URL"
PR_SET_PDEATHSIG = 1

# A Celery worker started as `python -c WORKER_MAIN worker ...`: `celery` itself, which gets SIGTERM
# (a warm shutdown, its prefork children with it) when this script dies, however it dies.
WORKER_MAIN = """\
import ctypes, signal, sys
try:
    ctypes.CDLL(None).prctl(%d, signal.SIGTERM, 0, 0, 0)
except (OSError, AttributeError):
    pass
from celery.__main__ import main
sys.argv[0] = "celery"
sys.exit(main())
""" % PR_SET_PDEATHSIG


def die_with_parent():
    """This script ends (SIGTERM, handled below: the workers are stopped) when the harness that
    started it does, so that a harness killed mid-run leaves no Celery behind."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass

# The harness always passes --redis; the workers, which import this module, find it here.
app = Celery("bench_celery", broker=os.environ.get(URL_ENV), backend=os.environ.get(URL_ENV))
app.conf.update(
    broker_connection_retry_on_startup=True,
    # The bench's own queue, so nothing else on the server is taken or purged.
    task_default_queue="mp-bench-celery",
    result_expires=600,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.ident")
def ident(x):
    return x


@app.task(name="bench.spin_us")
def spin_us(us):
    """The same spin as bench_mp.py's and the Rust side's: `us` microseconds of wall time."""
    end = time.perf_counter() + us / 1e6
    x = us
    while time.perf_counter() < end:
        x = (x * 6364136223846793005 + 1) & 0xFFFFFFFFFFFFFFFF
    return us


def run_plan(args, batch):
    """Runs batch(ops) args.warmup times untimed, then args.samples times timed.
    Returns seconds per operation for each timed batch (bench_mp.py's plan)."""
    for _ in range(args.warmup):
        batch(args.ops)
    out = []
    for _ in range(args.samples):
        t0 = time.perf_counter()
        batch(args.ops)
        out.append((time.perf_counter() - t0) / args.ops)
    return out


class Workers:
    """Celery worker processes of this run, each the leader of its own process group (its prefork
    children are in it too), so that stopping a group stops everything it started."""

    def __init__(self, url, count, pool):
        self.procs = []
        self.logs = []
        self.names = []
        env = dict(os.environ, **{URL_ENV: url})
        env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
        for i in range(count):
            name = "mp-bench-%d-%d@localhost" % (os.getpid(), i)
            log = tempfile.TemporaryFile()
            cmd = [
                sys.executable, "-c", WORKER_MAIN, "-A", "bench_celery", "worker",
                "--pool=" + pool, "--concurrency=1", "-n", name,
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                "--loglevel=WARNING",
            ]  # fmt: skip
            proc = subprocess.Popen(
                cmd, cwd=HERE, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
            )  # fmt: skip
            self.procs.append(proc)
            self.logs.append(log)
            self.names.append(name)

    def wait_ready(self, timeout=60.0):
        """Until every worker answers a ping; on timeout, raises with the workers' logs."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError("a Celery worker exited with %s: %s" % (p.returncode, self.tail()))
            replies = app.control.ping(destination=self.names, timeout=0.5) or []
            answered = {name for reply in replies for name in reply}
            if answered >= set(self.names):
                return
        raise RuntimeError("the Celery workers did not answer a ping in %.0f s: %s" % (timeout, self.tail()))

    def tail(self):
        text = []
        for log in self.logs:
            log.seek(0)
            text.append(log.read().decode(errors="replace")[-400:])
        return " | ".join(t.strip().replace("\n", " / ") for t in text if t.strip())

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)  # warm shutdown of the worker and its children
                except ProcessLookupError:
                    pass
        end = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                print("bench_celery: worker %d ignored SIGTERM; killing it" % p.pid, file=sys.stderr)
            # Whatever is left of the group (the worker, or a prefork child that outlived it).
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        for log in self.logs:
            log.close()


def fig_apply(args):
    def batch(ops):
        for i in range(ops):
            if ident.delay(i).get(timeout=30) != i:
                raise RuntimeError("a wrong result")

    return run_plan(args, batch)


def fig_map(args):
    def batch(ops):
        res = ident.chunks(zip(range(ops)), args.chunksize).group().apply_async()
        got = res.get(timeout=300)
        n = sum(len(chunk) for chunk in got)
        if n != ops:
            raise RuntimeError("%d results for %d items" % (n, ops))
        res.forget()

    return run_plan(args, batch)


def fig_cpu(args):
    def batch(ops):
        res = group(spin_us.s(args.spin_us) for _ in range(ops)).apply_async()
        got = res.get(timeout=300)
        if len(got) != ops:
            raise RuntimeError("%d results for %d tasks" % (len(got), ops))
        res.forget()

    return run_plan(args, batch)


FIGURES = {"celery-apply": fig_apply, "celery-map": fig_map, "celery-cpu": fig_cpu}

# Default plans: (warmup, samples, ops) for full and quick runs (the harness passes its own).
DEFAULTS = {
    "celery-apply": {"full": (1, 21, 500), "quick": (1, 9, 100)},
    "celery-map": {"full": (1, 11, 100_000), "quick": (1, 5, 20_000)},
    "celery-cpu": {"full": (0, 5, 400), "quick": (0, 3, 100)},
}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("figure", choices=sorted(FIGURES))
    ap.add_argument("--redis", required=True, help="the Redis URL: broker and result backend")
    ap.add_argument("--chunksize", type=int, default=100, help="celery-map's items per task")
    ap.add_argument("--spin-us", type=int, default=5000, help="celery-cpu's spin per task (µs)")
    ap.add_argument("--workers", type=int, help="worker processes (default: 1 for celery-apply, else 2)")
    ap.add_argument("--pool", choices=["prefork", "solo"], default="prefork")
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--samples", type=int)
    ap.add_argument("--ops", type=int, help="operations per timed batch")
    ap.add_argument("--quick", action="store_true", help="smaller default plan")
    args = ap.parse_args(argv)
    warmup, samples, ops = DEFAULTS[args.figure]["quick" if args.quick else "full"]
    args.warmup = warmup if args.warmup is None else args.warmup
    args.samples = samples if args.samples is None else args.samples
    args.ops = ops if args.ops is None else args.ops
    if args.workers is None:
        args.workers = 1 if args.figure == "celery-apply" else 2
    if args.samples < 1 or args.ops < 1 or args.warmup < 0 or args.workers < 1 or args.chunksize < 1:
        ap.error("--samples, --ops, --workers and --chunksize must be at least 1, --warmup at least 0")
    return args


# The workers of this run, for the SIGTERM handler.
RUNNING = []


def say(text):
    """A line on stderr, if stderr is still there (the harness may be gone)."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def stop_all_and_exit(code):
    """Stops the workers and leaves at once, without the interpreter's finalization: kombu's
    clean-up there may retry a connection to a server that is gone (the harness's, when the
    harness was killed) for ever. Stopping twice (should SIGTERM come now) does no harm."""
    try:
        for workers in RUNNING:
            workers.stop()
    finally:
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        os._exit(code)


def on_sigterm(signum, frame):
    """Nothing is raised here: library code the main thread happens to be in could catch it."""
    say("bench_celery: terminated")
    stop_all_and_exit(143)


def run(args):
    app.conf.broker_url = args.redis
    app.conf.result_backend = args.redis
    app.control.purge()  # nothing left on the bench's queue from an earlier run
    RUNNING.append(Workers(args.redis, args.workers, args.pool))
    RUNNING[0].wait_ready()
    samples = FIGURES[args.figure](args)
    import celery

    out = {"figure": args.figure, "seconds_per_op": samples, "celery": celery.__version__}
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


def main(argv):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    die_with_parent()
    code = 1
    try:
        run(args)
        code = 0
    except BaseException as e:
        say("bench_celery: %s: %s" % (type(e).__name__, e))
    finally:
        stop_all_and_exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
