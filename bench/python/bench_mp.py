#!/usr/bin/env python3
"""The Python side of multiprocess-bench: Python's multiprocessing on the same shapes.

Run by the Rust harness (bench/src/python.rs), one figure per invocation:

    bench_mp.py process     --method fork|spawn|forkserver   [plan]
    bench_mp.py pipe-rt                  [--cpus PARENT,CHILD] [plan]
    bench_mp.py pipe-oneway --size BYTES [--cpus PARENT,CHILD] [plan]
    bench_mp.py codec       --shape small|vec-u64|bytes      [plan]
    bench_mp.py lock                                         [plan]
    bench_mp.py lock-incr                [--cpus PARENT,CHILD] [plan]
    bench_mp.py event-rt                 [--cpus PARENT,CHILD] [plan]
    bench_mp.py shm-write   --size BYTES                     [plan]
    bench_mp.py shm-read    --size BYTES                     [plan]
    bench_mp.py barrier-rt               [--cpus PARENT,CHILD] [plan]
    bench_mp.py array-write --size BYTES                     [plan]
    bench_mp.py array-read  --size BYTES                     [plan]
    bench_mp.py queue-flow  --producers P --consumers C --size BYTES (0: int items) [--cpus ...] [plan]
    bench_mp.py queue-fresh --size BYTES [--cpus PARENT,CHILD] [plan]
    bench_mp.py queue-rt                 [--cpus PARENT,CHILD] [plan]
    bench_mp.py joinable                 [--cpus PARENT,CHILD] [plan]
    bench_mp.py event-timeout --timeout-ms MS                [plan]
    bench_mp.py lock-timeout  --timeout-ms MS                [plan]
    bench_mp.py queue-timeout --timeout-ms MS                [plan]
    bench_mp.py pool-map    [--chunksize N]                  [plan]
    bench_mp.py pool-imap-unordered                          [plan]
    bench_mp.py pool-apply                                   [plan]
    bench_mp.py pool-start                                   [plan]
    bench_mp.py pool-cpu    --workers N [--spin-us US] [--chunksize N] [plan]
    bench_mp.py pool-respawn                                 [plan]

    bench_mp.py manager-dict-rt                              [plan]
    bench_mp.py manager-queue-rt                             [plan]
    bench_mp.py manager-updates                              [plan]
    bench_mp.py manager-updates-each                         [plan]
    bench_mp.py manager-snapshot                             [plan]
    bench_mp.py manager-served-rt                            [plan]
    bench_mp.py pyclient-dict   [--connect ADDR --key HEX]   [plan]
    bench_mp.py pyclient-list   [--connect ADDR --key HEX]   [plan]
    bench_mp.py pyclient-queue  [--connect ADDR --key HEX]   [plan]
    bench_mp.py pyclient-churn  [--connect ADDR --key HEX]   [plan]

    plan: [--warmup W] [--samples S] [--ops N] [--quick]

Each figure runs W untimed batches, then S timed batches of N operations, and prints one JSON object
on stdout: {"figure": ..., "seconds_per_op": [one value per timed batch]}. The harness takes the
median. Without --warmup/--samples/--ops the defaults are the full run's (smaller with --quick); the
harness always passes the same plan it uses for its own side.
"""

import argparse
import json
import multiprocessing as mp
import os
import pickle
import sys
import time
from multiprocessing.managers import BaseManager

# Default plans: (warmup, samples, ops) for full and quick runs.
DEFAULTS = {
    "process": {"full": (2, 100, 1), "quick": (2, 20, 1)},
    "pipe-rt": {"full": (1, 51, 1000), "quick": (1, 15, 200)},
    "pipe-oneway": {"full": (1, 21, 5000), "quick": (1, 7, 1000)},
    "codec": {"full": (1, 31, 1000), "quick": (1, 9, 200)},
    "lock": {"full": (1, 31, 200_000), "quick": (1, 9, 200_000)},
    "lock-incr": {"full": (1, 21, 100_000), "quick": (1, 7, 40_000)},
    "event-rt": {"full": (1, 51, 1_000), "quick": (1, 15, 300)},
    "shm-write": {"full": (1, 31, 1), "quick": (1, 9, 1)},
    "shm-read": {"full": (1, 31, 1), "quick": (1, 9, 1)},
    "barrier-rt": {"full": (1, 51, 1_000), "quick": (1, 15, 300)},
    "array-write": {"full": (1, 31, 1), "quick": (1, 9, 1)},
    "array-read": {"full": (1, 31, 1), "quick": (1, 9, 1)},
    "queue-flow": {"full": (1, 21, 200_000), "quick": (1, 7, 50_000)},
    "queue-fresh": {"full": (1, 9, 200_000), "quick": (1, 5, 50_000)},
    "queue-rt": {"full": (1, 51, 1_000), "quick": (1, 15, 300)},
    "joinable": {"full": (1, 21, 200_000), "quick": (1, 7, 50_000)},
    "event-timeout": {"full": (1, 101, 1), "quick": (1, 31, 1)},
    "lock-timeout": {"full": (1, 101, 1), "quick": (1, 31, 1)},
    "queue-timeout": {"full": (1, 101, 1), "quick": (1, 31, 1)},
    "pool-map": {"full": (1, 11, 100_000), "quick": (1, 5, 20_000)},
    "pool-imap-unordered": {"full": (1, 11, 10_000), "quick": (1, 5, 2_000)},
    "pool-apply": {"full": (1, 31, 1_000), "quick": (1, 9, 200)},
    "pool-start": {"full": (1, 31, 1), "quick": (1, 9, 1)},
    "pool-cpu": {"full": (0, 5, 1_000), "quick": (0, 3, 200)},
    "pool-respawn": {"full": (1, 31, 1), "quick": (1, 9, 1)},
    "socket-rt": {"full": (1, 51, 1000), "quick": (1, 15, 200)},
    "socket-oneway": {"full": (1, 21, 256), "quick": (1, 7, 64)},
    "socket-connect": {"full": (1, 31, 200), "quick": (1, 9, 50)},
    "manager-dict-rt": {"full": (1, 31, 500), "quick": (1, 9, 100)},
    "manager-queue-rt": {"full": (1, 31, 500), "quick": (1, 9, 100)},
    "manager-updates": {"full": (1, 11, 1), "quick": (1, 5, 1)},
    "manager-updates-each": {"full": (1, 11, 1), "quick": (1, 5, 1)},
    "manager-snapshot": {"full": (1, 11, 1), "quick": (1, 5, 1)},
    "manager-served-rt": {"full": (1, 31, 500), "quick": (1, 9, 100)},
    "pyclient-dict": {"full": (1, 31, 500), "quick": (1, 9, 100)},
    "pyclient-list": {"full": (1, 31, 500), "quick": (1, 9, 100)},
    "pyclient-queue": {"full": (1, 31, 500), "quick": (1, 9, 100)},
    "pyclient-churn": {"full": (1, 11, 100), "quick": (1, 5, 30)},
}


def run_plan(args, batch):
    """Runs batch(ops) args.warmup times untimed, then args.samples times timed.
    Returns seconds per operation for each timed batch."""
    for _ in range(args.warmup):
        batch(args.ops)
    out = []
    for _ in range(args.samples):
        t0 = time.perf_counter()
        batch(args.ops)
        out.append((time.perf_counter() - t0) / args.ops)
    return out


# --- process: start + join of an empty function ---------------------------------------------------


def empty():
    pass


def fig_process(args):
    ctx = mp.get_context(args.method)

    def batch(ops):
        for _ in range(ops):
            p = ctx.Process(target=empty)
            p.start()
            p.join()
            if p.exitcode != 0:
                raise RuntimeError(f"child exited with {p.exitcode}")

    # The warmup batches start the fork server (forkserver) before anything is timed.
    return run_plan(args, batch)


# --- pipe: round trip and one-way throughput -------------------------------------------------------


def echo(conn):
    """Echoes every message until an empty one."""
    while True:
        msg = conn.recv_bytes()
        if not msg:
            return
        conn.send_bytes(msg)


def sender(conn, size):
    """For each 8-byte little-endian count n received, sends n messages of size bytes; an empty
    message ends it."""
    msg = b"\x5a" * size
    while True:
        cmd = conn.recv_bytes()
        if not cmd:
            return
        for _ in range(int.from_bytes(cmd, "little")):
            conn.send_bytes(msg)


def with_child(args, target, extra, measure):
    """Starts target(child_end, *extra) with fork, runs measure(parent_end), stops and joins it.
    With --cpus, the child runs on the CHILD CPU and this process on the PARENT one."""
    ctx = mp.get_context("fork")
    here, there = ctx.Pipe()
    p = ctx.Process(target=target, args=(there, *extra))
    if args.cpus:
        parent, child = args.cpus
        os.sched_setaffinity(0, {child})  # inherited by the forked child
        p.start()
        os.sched_setaffinity(0, {parent})
    else:
        p.start()
    there.close()
    try:
        return measure(here)
    finally:
        try:
            here.send_bytes(b"")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the child already ended on a stop item of its own (the queue figures)
        here.close()
        p.join()


def timed_round_trips(args, here):
    """The timed batches of a round-trip figure over here, whose peer runs echo."""
    msg = b"\x07" * 8

    def batch(ops):
        for _ in range(ops):
            here.send_bytes(msg)
            if len(here.recv_bytes()) != 8:
                raise RuntimeError("echo came back with the wrong size")

    return run_plan(args, batch)


def timed_one_way(args, here):
    """The timed batches of a one-way figure over here, whose peer runs sender(args.size)."""
    size = args.size

    def batch(ops):
        here.send_bytes(ops.to_bytes(8, "little"))
        for _ in range(ops):
            if len(here.recv_bytes()) != size:
                raise RuntimeError("a message of the wrong size")

    return run_plan(args, batch)


def fig_pipe_rt(args):
    return with_child(args, echo, (), lambda here: timed_round_trips(args, here))


def fig_pipe_oneway(args):
    return with_child(args, sender, (args.size,), lambda here: timed_one_way(args, here))


# --- codec: pickle.dumps + pickle.loads, what multiprocessing does to every value ------------------


def shape_value(shape):
    if shape == "small":
        # The Rust side's struct { id: u64, name: String, values: Vec<u32> } as a tuple.
        return (1_234_567_890_123, "sixteen chars ok", [i * 1000 for i in range(1, 9)])
    if shape == "vec-u64":
        return [i * i for i in range(10_000)]
    if shape == "bytes":
        return bytes(i % 251 for i in range(1 << 20))
    raise ValueError(f"unknown shape {shape!r}")


def fig_codec(args):
    value = shape_value(args.shape)
    dumps, loads = pickle.dumps, pickle.loads
    if loads(dumps(value)) != value:
        raise RuntimeError("pickle round trip is not faithful")

    def batch(ops):
        for _ in range(ops):
            loads(dumps(value))

    return run_plan(args, batch)


# --- sync: Lock, a lock-protected Value, SharedMemory -----------------------------------------------


def fig_lock(args):
    lock = mp.Lock()

    def batch(ops):
        for _ in range(ops):
            lock.acquire()
            lock.release()

    return run_plan(args, batch)


def increment(v, n):
    for _ in range(n):
        with v.get_lock():
            v.value += 1


def incrementer(conn, v):
    """For each 8-byte little-endian count n received, does n increments of v and answers with one
    byte; an empty message ends it."""
    while True:
        cmd = conn.recv_bytes()
        if not cmd:
            return
        increment(v, int.from_bytes(cmd, "little"))
        conn.send_bytes(b"k")


def fig_lock_incr(args):
    """A batch of ops increments: ops // 2 in the child, the rest here, at once."""
    v = mp.get_context("fork").Value("q", 0)
    expected = 0

    def measure(here):
        def batch(ops):
            nonlocal expected
            theirs = ops // 2
            here.send_bytes(theirs.to_bytes(8, "little"))
            increment(v, ops - theirs)
            here.recv_bytes()
            expected += ops

        return run_plan(args, batch)

    out = with_child(args, incrementer, (v,), measure)
    if v.value != expected:
        raise RuntimeError(f"the counter reads {v.value} after {expected} increments")
    return out


def ponger(conn, ping, pong, stop):
    """Answers every ping with a pong until it finds stop set after a ping."""
    while True:
        ping.wait()
        if stop.is_set():
            return
        ping.clear()
        pong.set()


def fig_event_rt(args):
    """The parent sets ping and waits on pong; the child waits on ping, clears it, sets pong; the
    parent clears pong. One round trip per operation."""
    ctx = mp.get_context("fork")
    ping, pong, stop = ctx.Event(), ctx.Event(), ctx.Event()

    def measure(_here):
        def batch(ops):
            for _ in range(ops):
                ping.set()
                pong.wait()
                pong.clear()

        try:
            return run_plan(args, batch)
        finally:
            stop.set()
            ping.set()

    return with_child(args, ponger, (ping, pong, stop), measure)


def fig_shm(args, write):
    from multiprocessing import shared_memory

    data = b"\x5a" * args.size
    shm = shared_memory.SharedMemory(create=True, size=args.size)
    try:
        shm.buf[:] = data  # touch every page before timing
        if bytes(shm.buf) != data:
            raise RuntimeError("read back other bytes than were written")

        def batch(ops):
            for _ in range(ops):
                if write:
                    shm.buf[:] = data
                else:
                    bytes(shm.buf)

        return run_plan(args, batch)
    finally:
        shm.close()
        shm.unlink()


def barrier_party(conn, barrier):
    """Passes the barrier until it is aborted."""
    import threading

    try:
        while True:
            barrier.wait()
    except threading.BrokenBarrierError:
        pass


def fig_barrier_rt(args):
    """A two-party barrier, the parent and a forked child: one round per operation."""
    barrier = mp.get_context("fork").Barrier(2)

    def measure(_here):
        def batch(ops):
            for _ in range(ops):
                barrier.wait()

        try:
            return run_plan(args, batch)
        finally:
            barrier.abort()

    return with_child(args, barrier_party, (barrier,), measure)


def fig_array(args, write):
    """A raw Array('Q') of SIZE bytes, copied in and out through a byte view of its buffer: the
    fastest way plain Python has (item-wise `arr[:] = ...` is far slower)."""
    arr = mp.get_context("fork").Array("Q", args.size // 8, lock=False)
    view = memoryview(arr).cast("B")
    data = b"\x5a" * args.size
    view[:] = data  # touch every page before timing
    if bytes(view) != data:
        raise RuntimeError("read back other bytes than were written")

    def batch(ops):
        for _ in range(ops):
            if write:
                view[:] = data
            else:
                bytes(view)

    return run_plan(args, batch)


# --- queue: producers and consumers, round trip, JoinableQueue ------------------------------------


STOP = -1


def q_producer(conn, q, item):
    """For each count n received, puts n items, then answers; STOP ends it."""
    while True:
        n = int.from_bytes(conn.recv_bytes(), "little", signed=True)
        if n == STOP:
            return
        for _ in range(n):
            q.put(item)
        conn.send_bytes(b"k")


def q_consumer(conn, q):
    """For each count n received, takes n items, then answers; STOP ends it."""
    while True:
        n = int.from_bytes(conn.recv_bytes(), "little", signed=True)
        if n == STOP:
            return
        for _ in range(n):
            q.get()
        conn.send_bytes(b"k")


def fig_queue_flow(args):
    """P producer and C consumer children (1 -> 1: the parent is the consumer, pinned with --cpus)."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    item = 7 if args.size == 0 else b"\x5a" * args.size
    order = lambda c, n: c.send_bytes(n.to_bytes(8, "little", signed=True))
    if args.producers == 1 and args.consumers == 1:

        def measure(here):
            def batch(ops):
                order(here, ops)
                for _ in range(ops):
                    q.get()
                here.recv_bytes()

            try:
                return run_plan(args, batch)
            finally:
                order(here, STOP)

        return with_child(args, q_producer, (q, item), measure)

    kids = []
    for target, extra in [(q_producer, (q, item))] * args.producers + [(q_consumer, (q,))] * args.consumers:
        here, there = ctx.Pipe()
        p = ctx.Process(target=target, args=(there, *extra))
        p.start()
        there.close()
        kids.append((here, p))

    def batch(ops):
        share = ops // 2
        for here, _ in kids:
            order(here, share)
        for here, _ in kids:
            here.recv_bytes()

    try:
        out = run_plan(args, batch)
        return [s * args.ops / (2 * (args.ops // 2)) for s in out]
    finally:
        for here, p in kids:
            order(here, STOP)
        for here, p in kids:
            p.join()


def q_put_all(q, item, n):
    for _ in range(n):
        q.put(item)


def fig_queue_fresh(args):
    """Each batch a new queue, whose producer child puts the batch at once while the parent takes."""
    ctx = mp.get_context("fork")
    item = 7 if args.size == 0 else b"\x5a" * args.size

    def batch(ops):
        q = ctx.Queue()
        p = ctx.Process(target=q_put_all, args=(q, item, ops))
        if args.cpus:
            parent, child = args.cpus
            os.sched_setaffinity(0, {child})  # inherited by the forked child
            p.start()
            os.sched_setaffinity(0, {parent})
        else:
            p.start()
        for _ in range(ops):
            q.get()
        p.join()

    return run_plan(args, batch)


def q_echo(conn, inq, out):
    while True:
        v = inq.get()
        if v == STOP:
            return
        out.put(v)


def fig_queue_rt(args):
    ctx = mp.get_context("fork")
    there, back = ctx.Queue(), ctx.Queue()

    def measure(_here):
        def batch(ops):
            for i in range(ops):
                there.put(i)
                if back.get() != i:
                    raise RuntimeError("echoed another item")

        try:
            return run_plan(args, batch)
        finally:
            there.put(STOP)

    return with_child(args, q_echo, (there, back), measure)


def q_worker(conn, q):
    while True:
        v = q.get()
        q.task_done()
        if v == STOP:
            return


def fig_joinable(args):
    q = mp.get_context("fork").JoinableQueue()

    def measure(_here):
        def batch(ops):
            for i in range(ops):
                q.put(i)
            q.join()

        try:
            return run_plan(args, batch)
        finally:
            q.put(STOP)

    return with_child(args, q_worker, (q,), measure)


# --- timeouts: one wait that times out per operation ------------------------------------------------


def fig_timeout(args, kind):
    """Event.wait(t) on a clear event, Lock.acquire(timeout=t) on a held lock, Queue.get(timeout=t)
    on an empty queue: each must time out."""
    ctx = mp.get_context("fork")
    t = args.timeout_ms / 1000.0
    if kind == "event":
        e = ctx.Event()
        wait = lambda: e.wait(t)
    elif kind == "lock":
        lock = ctx.Lock()
        lock.acquire()
        wait = lambda: lock.acquire(timeout=t)
    else:
        import queue as queue_mod

        q = ctx.Queue()

        def wait():
            try:
                q.get(timeout=t)
                return True
            except queue_mod.Empty:
                return False

    def batch(ops):
        for _ in range(ops):
            if wait():
                raise RuntimeError("the wait did not time out")

    return run_plan(args, batch)


# --- pool: multiprocessing.Pool with fork workers ---------------------------------------------------


def ident(x):
    return x


def spin_us(us):
    end = time.perf_counter() + us / 1e6
    x = us
    while time.perf_counter() < end:
        x = (x * 6364136223846793005 + 1) & 0xFFFFFFFFFFFFFFFF
    return us


def fig_pool_map(args):
    """Pool(2).map(ident, range(ops)), with --chunksize when given (else Python's default)."""
    with mp.get_context("fork").Pool(2) as pool:

        def batch(ops):
            got = pool.map(ident, range(ops), chunksize=args.chunksize)
            if len(got) != ops:
                raise RuntimeError("missing results")

        return run_plan(args, batch)


def fig_pool_imap_unordered(args):
    with mp.get_context("fork").Pool(2) as pool:

        def batch(ops):
            n = sum(1 for _ in pool.imap_unordered(ident, range(ops)))
            if n != ops:
                raise RuntimeError("missing results")

        return run_plan(args, batch)


def fig_pool_apply(args):
    with mp.get_context("fork").Pool(2) as pool:

        def batch(ops):
            for i in range(ops):
                if pool.apply(ident, (i,)) != i:
                    raise RuntimeError("a wrong result")

        return run_plan(args, batch)


def fig_pool_start(args):
    def batch(ops):
        for _ in range(ops):
            pool = mp.get_context("fork").Pool(2)
            pool.close()
            pool.join()

    return run_plan(args, batch)


def fig_pool_cpu(args):
    """map over ops tasks of --spin-us (default 1 ms) of spinning, on --workers workers, with
    --chunksize when given (else Python's default)."""
    with mp.get_context("fork").Pool(args.workers) as pool:

        def batch(ops):
            got = pool.map(spin_us, [args.spin_us] * ops, chunksize=args.chunksize)
            if len(got) != ops:
                raise RuntimeError("missing results")

        return run_plan(args, batch)


def fig_pool_respawn(args):
    """Pool(1): the worker is killed, then one apply, which its replacement runs."""
    import signal

    with mp.get_context("fork").Pool(1) as pool:

        def batch(ops):
            for _ in range(ops):
                try:
                    pool.apply_async(ident, (0,)).get(timeout=5)
                    os.kill(pool._pool[0].pid, signal.SIGKILL)
                    pool.apply_async(ident, (1,)).get(timeout=5)
                except mp.TimeoutError:
                    # The idle worker was killed inside inqueue.get(), holding the queue's read
                    # lock: no worker can take a task again (bpo-22393's family), and terminate()
                    # hangs too, so leave at once.
                    print(
                        "pool-respawn: Python's pool hung after its worker was killed (no result in 5 s)",
                        file=sys.stderr,
                    )
                    for p in pool._pool:  # they hold the harness's pipe open
                        try:
                            os.kill(p.pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    os._exit(3)

        return run_plan(args, batch)


# --- socket: Listener/Client over an abstract Unix name or TCP loopback ---------------------------

SOCKET_KEY = b"bench key"


def socket_place(family):
    if family == "unix":
        return "\0mp-bench-py-%d-%d" % (os.getpid(), time.perf_counter_ns())
    return ("127.0.0.1", 0)


def socket_echo_client(address):
    from multiprocessing.connection import Client

    with Client(address) as c:
        echo(c)


def socket_send_client(address, size):
    from multiprocessing.connection import Client

    with Client(address) as c:
        sender(c, size)


def with_socket_client(args, target, extra, measure):
    """The parent listens at a fresh place of --family; a forked child (pinned as with_child's)
    connects with target(address, *extra); measure(conn) runs over the accepted connection."""
    from multiprocessing.connection import Listener

    ctx = mp.get_context("fork")
    with Listener(socket_place(args.family)) as listener:
        p = ctx.Process(target=target, args=(listener.address, *extra))
        if args.cpus:
            parent, child = args.cpus
            os.sched_setaffinity(0, {child})
            p.start()
            os.sched_setaffinity(0, {parent})
        else:
            p.start()
        conn = listener.accept()
        try:
            return measure(conn)
        finally:
            conn.send_bytes(b"")
            conn.close()
            p.join()


def fig_socket_rt(args):
    return with_socket_client(args, socket_echo_client, (), lambda c: timed_round_trips(args, c))


def fig_socket_oneway(args):
    return with_socket_client(
        args, socket_send_client, (args.size,), lambda c: timed_one_way(args, c)
    )


def socket_keyed_server(report, family):
    from multiprocessing.connection import Listener

    with Listener(socket_place(family), authkey=SOCKET_KEY) as listener:
        report.send(listener.address)
        while True:
            c = listener.accept()
            try:
                m = c.recv_bytes()
            except EOFError:
                c.close()
                continue
            c.close()
            if m == b"stop":
                return


def fig_socket_connect(args):
    from multiprocessing.connection import Client

    ctx = mp.get_context("fork")
    here, there = ctx.Pipe()
    p = ctx.Process(target=socket_keyed_server, args=(there, args.family))
    if args.cpus:
        parent, child = args.cpus
        os.sched_setaffinity(0, {child})
        p.start()
        os.sched_setaffinity(0, {parent})
    else:
        p.start()
    address = here.recv()

    def batch(ops):
        for _ in range(ops):
            Client(address, authkey=SOCKET_KEY).close()

    try:
        return run_plan(args, batch)
    finally:
        with Client(address, authkey=SOCKET_KEY) as c:
            c.send_bytes(b"stop")
        p.join()


# --- manager: Manager().dict() through its proxy --------------------------------------------------


def dict_rt_batch(d):
    """A batch of d[k] = v, then d[k] (two round trips per op)."""

    def batch(ops):
        for i in range(ops):
            d[i % 64] = i
            if d[i % 64] != i:
                raise RuntimeError("a wrong value")

    return batch


def queue_rt_batch(q):
    """A batch of q.put(i), then q.get() (two round trips per op)."""

    def batch(ops):
        for i in range(ops):
            q.put(i)
            if q.get() != i:
                raise RuntimeError("a wrong item")

    return batch


def fig_manager_dict_rt(args):
    """One op: d[k] = v, then d[k] (two round trips, as the Rust side's set + get)."""
    with mp.get_context("fork").Manager() as m:
        return run_plan(args, dict_rt_batch(m.dict()))


def fig_manager_queue_rt(args):
    """One op: q.put(i) then q.get() on a Manager().Queue() (two round trips)."""
    with mp.get_context("fork").Manager() as m:
        return run_plan(args, queue_rt_batch(m.Queue()))


def fig_manager_updates_each(args):
    """One op: 1000 updates of a dict, one at a time (d[i] = i)."""
    with mp.get_context("fork").Manager() as m:
        d = m.dict()

        def batch(ops):
            for _ in range(ops):
                for i in range(1000):
                    d[i] = i

        return run_plan(args, batch)


def fig_manager_updates(args):
    """One op: 1000 updates of a dict in one call (Python has no batch: d.update is its one
    round trip for many, and what the batched row compares with)."""
    with mp.get_context("fork").Manager() as m:
        d = m.dict()

        def batch(ops):
            for _ in range(ops):
                d.update({i: i for i in range(1000)})

        return run_plan(args, batch)


def fig_manager_snapshot(args):
    """One op: a copy of a 10 000-entry dict (`d.copy()`, one round trip)."""
    with mp.get_context("fork").Manager() as m:
        d = m.dict({i: i for i in range(10_000)})

        def batch(ops):
            for _ in range(ops):
                if len(d.copy()) != 10_000:
                    raise RuntimeError("a short copy")

        return run_plan(args, batch)


class Counter:
    """A type of the benchmark's own, served by a BaseManager (the Rust side's `Serve` type)."""

    def __init__(self):
        self.total = 0

    def add(self, n):
        self.total += n
        return self.total


class CounterManager(BaseManager):
    pass


CounterManager.register("Counter", Counter)


def fig_manager_served_rt(args):
    """One op: c.add(1) on a registered type's proxy (one round trip)."""
    with CounterManager(ctx=mp.get_context("fork")) as m:
        c = m.Counter()
        expected = [0]

        def batch(ops):
            for _ in range(ops):
                expected[0] += 1
                if c.add(1) != expected[0]:
                    raise RuntimeError("a wrong total")

        return run_plan(args, batch)


def python_client(args):
    """A SyncManager client: of the server at --connect (the Rust one), else of Python's own,
    started here. Gives (manager, stop)."""
    from multiprocessing.managers import SyncManager

    if args.connect:
        if args.connect.startswith("/"):
            address = args.connect
        else:
            host, port = args.connect.rsplit(":", 1)
            address = (host, int(port))
        m = SyncManager(address=address, authkey=bytes.fromhex(args.key))
        m.connect()
        return m, lambda: None
    m = mp.get_context("fork").Manager()
    return m, m.shutdown


def fig_pyclient(args, what):
    """One op through a Python client's proxy: dict d[k] = v then d[k]; list append; queue put
    then get. The same script measures the Rust server (--connect) and Python's."""
    m, stop = python_client(args)
    try:
        if what == "dict":
            batch = dict_rt_batch(m.dict())
        elif what == "list":
            lst = m.list()

            def batch(ops):
                for i in range(ops):
                    lst.append(i)

        elif what == "churn":
            # A proxy's whole life: create, incref, decref (three connections), its method
            # connection, one call, and the decref when it goes.
            def batch(ops):
                for i in range(ops):
                    d = m.dict()
                    d["k"] = i
                    del d

        else:
            batch = queue_rt_batch(m.Queue())
        return run_plan(args, batch)
    finally:
        stop()


FIGURES = {
    "process": fig_process,
    "pipe-rt": fig_pipe_rt,
    "pipe-oneway": fig_pipe_oneway,
    "codec": fig_codec,
    "lock": fig_lock,
    "lock-incr": fig_lock_incr,
    "event-rt": fig_event_rt,
    "shm-write": lambda args: fig_shm(args, write=True),
    "shm-read": lambda args: fig_shm(args, write=False),
    "barrier-rt": fig_barrier_rt,
    "array-write": lambda args: fig_array(args, write=True),
    "array-read": lambda args: fig_array(args, write=False),
    "queue-flow": fig_queue_flow,
    "queue-fresh": fig_queue_fresh,
    "queue-rt": fig_queue_rt,
    "joinable": fig_joinable,
    "event-timeout": lambda args: fig_timeout(args, "event"),
    "lock-timeout": lambda args: fig_timeout(args, "lock"),
    "queue-timeout": lambda args: fig_timeout(args, "queue"),
    "pool-map": fig_pool_map,
    "pool-imap-unordered": fig_pool_imap_unordered,
    "pool-apply": fig_pool_apply,
    "pool-start": fig_pool_start,
    "pool-cpu": fig_pool_cpu,
    "pool-respawn": fig_pool_respawn,
    "socket-rt": fig_socket_rt,
    "socket-oneway": fig_socket_oneway,
    "socket-connect": fig_socket_connect,
    "manager-dict-rt": fig_manager_dict_rt,
    "manager-queue-rt": fig_manager_queue_rt,
    "manager-updates": fig_manager_updates,
    "manager-updates-each": fig_manager_updates_each,
    "manager-snapshot": fig_manager_snapshot,
    "manager-served-rt": fig_manager_served_rt,
    "pyclient-dict": lambda args: fig_pyclient(args, "dict"),
    "pyclient-list": lambda args: fig_pyclient(args, "list"),
    "pyclient-queue": lambda args: fig_pyclient(args, "queue"),
    "pyclient-churn": lambda args: fig_pyclient(args, "churn"),
}


def cpu_pair(text):
    parent, child = (int(c) for c in text.split(","))
    return parent, child


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("figure", choices=sorted(FIGURES))
    ap.add_argument("--method", choices=["fork", "spawn", "forkserver"], default="fork")
    ap.add_argument(
        "--size", type=int, default=64, help="bytes: pipe-oneway's messages, shm-*'s region"
    )
    ap.add_argument("--producers", type=int, default=1)
    ap.add_argument("--consumers", type=int, default=1)
    ap.add_argument("--shape", choices=["small", "vec-u64", "bytes"], default="small")
    ap.add_argument(
        "--cpus", type=cpu_pair, help="PARENT,CHILD: pin the two processes of pipe-*, lock-incr and event-rt"
    )
    ap.add_argument("--timeout-ms", type=int, default=1, help="the *-timeout figures' timeout")
    ap.add_argument("--chunksize", type=int, help="pool-map's and pool-cpu's chunk size (default: Python's rule)")
    ap.add_argument("--workers", type=int, default=2, help="pool-cpu's workers")
    ap.add_argument("--spin-us", type=int, default=1000, help="pool-cpu's spin per task (µs)")
    ap.add_argument("--family", choices=["unix", "tcp"], default="unix", help="socket-*'s transport")
    ap.add_argument("--connect", help="pyclient-*: the address of the manager to use (else Python's own)")
    ap.add_argument("--key", default="", help="pyclient-*: its key, in hex")
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--samples", type=int)
    ap.add_argument("--ops", type=int, help="operations per timed batch")
    ap.add_argument("--quick", action="store_true", help="smaller default plan")
    args = ap.parse_args(argv)
    warmup, samples, ops = DEFAULTS[args.figure]["quick" if args.quick else "full"]
    args.warmup = warmup if args.warmup is None else args.warmup
    args.samples = samples if args.samples is None else args.samples
    args.ops = ops if args.ops is None else args.ops
    if args.samples < 1 or args.ops < 1 or args.warmup < 0:
        ap.error("--samples and --ops must be at least 1, --warmup at least 0")
    return args


def main(argv):
    args = parse_args(argv)
    samples = FIGURES[args.figure](args)
    json.dump({"figure": args.figure, "seconds_per_op": samples}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
