#!/usr/bin/env python3
"""Python counterparts of the procpool benchmarks (stdlib only).

Subcommands (each prints its own timing on stderr as `py_pool: ...`):

  demo      7 scientists x 1 s of sleep, 4 workers, ProcessPoolExecutor.map,
            printing "Process <pid> working record <name>" (the classic lesson).
  file      JSON lines in -> `age` -> JSON lines out, like
            `coordinator --task age --input F --output G`.
            --executor process (ProcessPoolExecutor.map) | mp (multiprocessing.Pool.imap)
                       | serial (plain map, no pool: the baseline)
            --parse parent (parent parses JSON and writes JSON, workers get dicts:
                            the same split as the Rust coordinator)
                  | worker (workers get raw lines and return JSON text)
  inmem     the same transform over an in-memory list of dicts; only the map is
            timed (pool started and warmed up first, no file I/O).
  startup   time from creating a pool of K workers until each of the K workers
            has handled one record (a barrier makes every worker take exactly one),
            with the fork or spawn start method.
  primes    count primes below n (the odd-only sieve of crates/tasks/src/primes.rs)
            for --count records, with --executor process|mp|thread|serial.
  locked    `primes` under ThreadPoolExecutor: the GIL serialises the threads, the
            Python twin of the Rust `locked` task's process-wide mutex.

The `age` transform is {"name","field","born","nobel"} -> {"name","age": year-born},
serialised compactly with raw UTF-8, byte-identical to the coordinator's output.
"""

import argparse
import concurrent.futures as cf
import csv
import functools
import json
import multiprocessing as mp
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

DEMO_FALLBACK = [
    ("Ada Lovelace", "math", 1815, "no"),
    ("Emmy Noether", "math", 1882, "no"),
    ("Marie Curie", "physics", 1867, "yes"),
    ("Tu Youyou", "chemistry", 1930, "yes"),
    ("Ada Yonath", "chemistry", 1939, "yes"),
    ("Vera Rubin", "astronomy", 1928, "no"),
    ("Sally Ride", "physics", 1951, "no"),
]


def log(msg):
    print(f"py_pool: {msg}", file=sys.stderr, flush=True)


def dump(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# --- the age task -----------------------------------------------------------


def age(year, rec):
    """Worker side of `age` on a parsed record (dict)."""
    return {"name": rec["name"], "age": year - rec["born"]}


def age_line(year, line):
    """Worker side of `age` on a raw JSON line: parse, compute, serialise."""
    rec = json.loads(line)
    return dump({"name": rec["name"], "age": year - rec["born"]})


def demo_work(year, work_s, rec):
    print(f"Process {os.getpid()} working record {rec['name']}", flush=True)
    time.sleep(work_s)
    return age(year, rec)


# --- the primes task ----------------------------------------------------------


def count_primes_below(n):
    """Primes p < n, by the odd-only sieve of crates/tasks/src/primes.rs.

    Index i stands for the odd number 2i+1. The marking of multiples of p is one
    bytearray slice assignment (the C-speed way to write the same inner loop).
    """
    if n <= 2:
        return 0
    length = n // 2
    composite = bytearray(length)
    composite[0] = 1
    i = 1
    while (2 * i + 1) * (2 * i + 1) < n:
        if not composite[i]:
            p = 2 * i + 1
            start = (p * p) // 2
            composite[start::p] = b"\x01" * len(range(start, length, p))
        i += 1
    return 1 + composite.count(0)


def count_primes_below_loop(n):
    """The same sieve with the inner loop written element by element (pure Python)."""
    if n <= 2:
        return 0
    length = n // 2
    composite = bytearray(length)
    composite[0] = 1
    i = 1
    while (2 * i + 1) * (2 * i + 1) < n:
        if not composite[i]:
            p = 2 * i + 1
            j = (p * p) // 2
            while j < length:
                composite[j] = 1
                j += p
        i += 1
    return 1 + composite.count(0)


def primes_task(loop, n):
    return {"n": n, "primes": (count_primes_below_loop if loop else count_primes_below)(n)}


# --- helpers ------------------------------------------------------------------


def current_year():
    return time.gmtime().tm_year


def demo_records():
    path = os.path.join(HERE, "..", "data", "scientists.csv")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return [
                {"name": r["name"], "field": r["field"], "born": int(r["born"]), "nobel": r["nobel"]}
                for r in csv.DictReader(f)
            ]
    except OSError:
        return [dict(name=a, field=b, born=c, nobel=d) for a, b, c, d in DEMO_FALLBACK]


class Serial:
    """A stand-in executor that maps in the calling process."""

    def map(self, fn, it, chunksize=1):
        return map(fn, it)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def make_executor(kind, workers, start=None):
    """Return (context manager, map function)."""
    ctx = mp.get_context(start) if start else None
    if kind == "process":
        ex = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
        return ex, lambda fn, it, cs: ex.map(fn, it, chunksize=cs)
    if kind == "mp":
        pool = (ctx or mp).Pool(processes=workers)
        return pool, lambda fn, it, cs: pool.imap(fn, it, chunksize=cs)
    if kind == "thread":
        ex = cf.ThreadPoolExecutor(max_workers=workers)
        return ex, lambda fn, it, cs: ex.map(fn, it)
    if kind == "serial":
        ex = Serial()
        return ex, lambda fn, it, cs: map(fn, it)
    raise SystemExit(f"unknown executor {kind}")


# --- subcommands ------------------------------------------------------------------


def cmd_demo(a):
    year = a.year or current_year()
    records = demo_records()
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(max_workers=a.workers) as ex:
        results = list(ex.map(functools.partial(demo_work, year, a.work_ms / 1000), records))
    for r in results:
        print(dump(r))
    log(f"demo: {len(records)} records with {a.workers} workers in {time.perf_counter() - t0:.3f} s")


def cmd_file(a):
    year = a.year or current_year()
    t0 = time.perf_counter()
    ex, pmap = make_executor(a.executor, a.workers)
    n = 0
    with ex, open(a.input, encoding="utf-8") as fin, open(a.output, "w", encoding="utf-8") as fout:
        write = fout.write
        if a.parse == "parent":
            records = (json.loads(line) for line in fin if line.strip())
            for r in pmap(functools.partial(age, year), records, a.chunksize):
                write(dump(r) + "\n")
                n += 1
        else:
            lines = (line for line in fin if line.strip())
            for s in pmap(functools.partial(age_line, year), lines, a.chunksize):
                write(s + "\n")
                n += 1
    log(
        f"file: {n} records, executor={a.executor} parse={a.parse} chunksize={a.chunksize} "
        f"workers={a.workers} in {time.perf_counter() - t0:.3f} s"
    )


def cmd_inmem(a):
    sys.path.insert(0, HERE)
    from gen_data import scientist_lines  # noqa: E402

    year = a.year or current_year()
    records = [json.loads(line) for line in scientist_lines(a.count)]
    ex, pmap = make_executor(a.executor, a.workers)
    with ex:
        # Warm up: start every worker before the clock runs.
        list(pmap(functools.partial(age, year), records[: a.workers * 4], 1))
        t0 = time.perf_counter()
        out = list(pmap(functools.partial(age, year), records, a.chunksize))
        dt = time.perf_counter() - t0
    assert len(out) == len(records)
    print(json.dumps({"records": len(out), "seconds": dt, "records_per_s": len(out) / dt}))
    log(f"inmem: {len(out)} records, executor={a.executor} chunksize={a.chunksize} map in {dt:.3f} s")


_barrier = None


def _init_barrier(b):
    global _barrier
    _barrier = b


def startup_task(year, rec):
    # Every worker blocks here until all K have a record: each handles exactly one.
    _barrier.wait(timeout=60)
    return os.getpid(), age(year, rec)


def cmd_startup(a):
    year = a.year or current_year()
    ctx = mp.get_context(a.start)
    recs = [{"name": f"r{i}", "field": "math", "born": 1900, "nobel": "no"} for i in range(a.workers)]
    t0 = time.perf_counter()
    barrier = ctx.Barrier(a.workers)
    with cf.ProcessPoolExecutor(
        max_workers=a.workers, mp_context=ctx, initializer=_init_barrier, initargs=(barrier,)
    ) as ex:
        res = list(ex.map(functools.partial(startup_task, year), recs))
        ready = time.perf_counter() - t0
    total = time.perf_counter() - t0
    pids = {pid for pid, _ in res}
    assert len(pids) == a.workers, f"{len(pids)} distinct workers, expected {a.workers}"
    print(json.dumps({"workers": a.workers, "start": a.start, "ready_s": ready, "with_shutdown_s": total}))
    log(f"startup: {a.workers} workers ({a.start}) each handled one record in {ready:.3f} s; {total:.3f} s with shutdown")


def cmd_primes(a, executor=None):
    executor = executor or a.executor
    inputs = [a.n] * a.count
    t0 = time.perf_counter()
    ex, pmap = make_executor(executor, a.workers)
    with ex:
        out = list(pmap(functools.partial(primes_task, a.sieve == "loop"), inputs, a.chunksize))
    dt = time.perf_counter() - t0
    if a.output:
        with open(a.output, "w", encoding="utf-8") as f:
            f.writelines(dump(r) + "\n" for r in out)
    print(json.dumps({"executor": executor, "workers": a.workers, "records": len(out), "seconds": dt,
                      "primes": out[0]["primes"] if out else None}))
    log(f"primes: {len(out)} x n={a.n} ({a.sieve} sieve), executor={executor} workers={a.workers} in {dt:.3f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("demo")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--work-ms", type=int, default=1000)
    p.add_argument("--year", type=int)
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("file")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--executor", choices=["process", "mp", "serial"], default="process")
    p.add_argument("--parse", choices=["parent", "worker"], default="parent")
    p.add_argument("--chunksize", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--year", type=int)
    p.set_defaults(fn=cmd_file)

    p = sub.add_parser("inmem")
    p.add_argument("--count", type=int, default=1_000_000)
    p.add_argument("--executor", choices=["process", "mp", "serial"], default="process")
    p.add_argument("--chunksize", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--year", type=int)
    p.set_defaults(fn=cmd_inmem)

    p = sub.add_parser("startup")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--start", choices=["fork", "spawn", "forkserver"], default="fork")
    p.add_argument("--year", type=int)
    p.set_defaults(fn=cmd_startup)

    for name in ("primes", "locked"):
        p = sub.add_parser(name)
        p.add_argument("--count", type=int, default=64)
        p.add_argument("--n", type=int, default=20_000_000)
        p.add_argument("--workers", type=int, default=2)
        p.add_argument("--chunksize", type=int, default=1)
        p.add_argument("--sieve", choices=["slice", "loop"], default="slice")
        p.add_argument("--output")
        if name == "primes":
            p.add_argument("--executor", choices=["process", "mp", "thread", "serial"], default="process")
            p.set_defaults(fn=cmd_primes)
        else:
            p.set_defaults(fn=lambda a: cmd_primes(a, "thread"))

    a = ap.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
