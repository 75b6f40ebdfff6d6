#!/usr/bin/env python3
"""Render bench-out/results.jsonl (from measure.py) as markdown tables of medians.

    report.py bench-out/results.jsonl bench-out/meta.json > bench-out/results.md
"""

import json
import os
import sys


def load(path):
    res = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                res[r["id"]] = r
    return res


R = {}
META = {}


def med(id_, key="wall_s"):
    r = R.get(id_)
    if not r or "median" not in r:
        return None
    return r["median"].get(key)


def failed(id_):
    r = R.get(id_)
    return bool(r and "error" in r)


def s(v, digits=3):
    return "–" if v is None else f"{v:.{digits}f} s"


def cell(id_, key="wall_s", digits=3, approx=False):
    if failed(id_):
        return "FAILED"
    v = med(id_, key)
    if v is None:
        return "–"
    return ("≈ " if approx else "") + s(v, digits)


def rate(id_, key="wall_s"):
    r = R.get(id_)
    v = med(id_, key)
    if not r or v is None or not r.get("records"):
        return "–"
    n = r["records"] * r.get("scale", 1.0)
    return f"{n / v:,.0f}/s"


def mb(kb):
    return "–" if kb is None else f"{kb / 1024:.1f} MB"


def ratio(py, rust):
    if py is None or rust is None or rust == 0:
        return "–"
    return f"{py / rust:.1f}×"


def per_rec_ns(id_, key, records):
    v = med(id_, key)
    if v is None or not records:
        return "–"
    return f"{v / records * 1e9:,.0f} ns"


def best(ids, key="wall_s"):
    cands = [(med(i, key), i) for i in ids if med(i, key) is not None]
    return min(cands) if cands else (None, None)


def main():
    global R, META
    R = load(sys.argv[1])
    META = json.load(open(sys.argv[2])) if len(sys.argv) > 2 and os.path.exists(sys.argv[2]) else {}
    out_dir = os.path.dirname(os.path.abspath(sys.argv[1]))
    N, SAMPLE, BIG, SCALE = META.get("n", 0), META.get("sample", 0), META.get("big", 0), META.get("scale", 1)
    PC, PN = META.get("primes_count", 64), META.get("primes_n", 20_000_000)
    p = print

    p(f"# procpool vs Python process pools{' (QUICK run: smaller sizes)' if META.get('quick') else ''}\n")
    stamps = sorted(r["t"] for r in R.values() if "t" in r)
    when = f"{stamps[0]} – {stamps[-1]}" if stamps else META.get("date", "?")
    p(f"- measured: {when}; machine: {META.get('nproc','?')} CPUs, {META.get('cpu','?')}, "
      f"{META.get('mem','?')}, Linux {META.get('kernel','?')}")
    p(f"- {META.get('rustc','?')}; {META.get('python','?')}; procpool at {META.get('git','?')}")
    p(f"- load average at start / end: {META.get('loadavg_start','?')} / {META.get('loadavg_end','?')}")
    p(f"- every figure is the MEDIAN of {META.get('runs','?')} runs ({META.get('runs_long','?')} for the long ones; "
      f"{META.get('runs_b','?')} alternating pairs for b's pool and no-pool loop); "
      "wall = whole process unless said otherwise; raw runs in results.jsonl")
    ident_loop = os.path.join(out_dir, "identical_loop.json")
    if os.path.exists(ident_loop):
        p(f"- coordinator and no-pool loop outputs of (b) byte-identical: {json.load(open(ident_loop))}")
    ident = os.path.join(out_dir, "identical.json")
    if os.path.exists(ident):
        p(f"- Rust and Python outputs of (b) byte-identical: {json.load(open(ident))}")
    p("")

    # ---------------------------------------------------------------- summary
    b_py = [k for k in R if k.startswith("b.py.") and not k.endswith(".cs1") and k != "b.py.serial"]
    b_best_v, b_best = best(b_py)
    c_py = [k for k in R if k.startswith("c.py.") and k != "c.py.serial"]
    c_best_v, c_best = best(c_py, "out_seconds")
    c_rust = [k for k in R if k.startswith("c.rust")]
    c_rbest_v, c_rbest = best(c_rust, "out_seconds")

    p("## Summary (medians)\n")
    p("| scenario | Rust procpool | best Python | Python / Rust |")
    p("|---|---|---|---|")
    p(f"| a. demo: 7 records × 1 s sleep, 4 workers (wall) | {cell('a.rust')} | {cell('a.py')} (ProcessPoolExecutor) | {ratio(med('a.py'), med('a.rust'))} |")
    p(f"| b. {N:,} `age` records, file → file, 2 workers (wall) | {cell('b.rust')} | {s(b_best_v)} ({b_best or '–'}) | {ratio(b_best_v, med('b.rust'))} |")
    if "b.loop" in R:
        pairs = R.get("b.rust", {}).get("pair_ratio")
        paired = f"; median of the alternating runs' ratios {pairs:.3f}" if pairs else ""
        pool, loop = med("b.rust"), med("b.loop")
        of_medians = f"{pool / loop:.3f}×" if pool and loop else "–"
        p(f"| b. … the same, no pool: one Rust thread (wall; pool / loop = {of_medians}{paired}) | {cell('b.loop')} | {cell('b.py.serial')} (Python, no pool) | – |")
    if c_rbest:
        p(f"| c. in-memory map of {N:,} records, 2 workers (map only) | {cell(c_rbest, 'out_seconds')} ({c_rbest}) | {s(c_best_v)} ({c_best or '–'}) | {ratio(c_best_v, c_rbest_v)} |")
    else:
        p(f"| c. in-memory map of {N:,} records, 2 workers (map only) | needs a bench target; to be added | {s(c_best_v)} ({c_best or '–'}) | – |")
    p(f"| d. start-up, 4 records through 4 workers (whole process) | {cell('d.rust.4')} | {cell('d.py.fork.4')} (fork); {cell('d.py.spawn.4')} (spawn) | {ratio(med('d.py.fork.4'), med('d.rust.4'))} (fork) |")
    p(f"| e. primes < {PN:,} × {PC}, 2 workers (wall) | {cell('e.rust.2')} | {cell('e.py.process.2')} (ProcessPoolExecutor, C-speed slice sieve) | {ratio(med('e.py.process.2'), med('e.rust.2'))} |")
    p(f"| e. the GIL: same work, 2-way, Rust `locked` in processes vs Python threads | {cell('e.rust.locked.2')} | {cell('e.py.thread.2')} (ThreadPoolExecutor) | {ratio(med('e.py.thread.2'), med('e.rust.locked.2'))} |")
    p(f"| f. coordinator peak RSS, {N:,} records (`/usr/bin/time -v`) | {mb(med('f.rust.n', 'timev_maxrss_kb'))} | {mb(med(b_best, 'hwm_kb')) if b_best else '–'} (parent process of {b_best}) | – |")
    if BIG:
        p(f"| f. coordinator peak RSS, {BIG:,} records | {mb(med('f.rust.big', 'timev_maxrss_kb'))} | – | – |")
    p(f"| g. coordinator CPU per record, {N:,} records (own user+sys / records) | {per_rec_ns('b.rust', 'self_cpu_s', N)} | {per_rec_ns(b_best, 'self_cpu_s', N) if b_best else '–'} (parent process of {b_best}, which only moves lines) | {ratio(med(b_best, 'self_cpu_s') if b_best else None, med('b.rust', 'self_cpu_s'))} |")
    same_v, same = best([k for k in b_py if ".parent." in k], "self_cpu_s")
    if same:
        p(f"| g. … with the coordinator's split of work (parent parses and writes JSON, workers compute) | {per_rec_ns('b.rust', 'self_cpu_s', N)} | {per_rec_ns(same, 'self_cpu_s', N)} (parent process of {same}) | {ratio(same_v, med('b.rust', 'self_cpu_s'))} |")
    p("")

    # ---------------------------------------------------------------- a
    if "a.rust" in R or "a.py" in R:
        p("## a. Demo (7 scientists, 1 s of sleep each, 4 workers)\n")
        p("| program | wall | CPU (whole tree, user+sys) |")
        p("|---|---|---|")
        for i, name in (("a.rust", "`coordinator --workers 4`"), ("a.py", "`py_pool.py demo` (ProcessPoolExecutor.map)")):
            cpu = None
            if med(i) is not None:
                cpu = med(i, "tree_user_s") + med(i, "tree_sys_s")
            p(f"| {name} | {cell(i)} | {s(cpu)} |")
        p("")

    # ---------------------------------------------------------------- b
    if any(k.startswith("b.") for k in R):
        p(f"## b. {N:,} tiny `age` records, JSON lines file → file, 2 workers\n")
        p(f"Rows marked ≈ ran on the first {SAMPLE:,} records and are multiplied by {SCALE} "
          "(chunksize 1 is too slow for the full file); all other rows ran the full file.\n")
        p("| program | config | wall | records/s | parent/coordinator own CPU | workers' CPU | parent peak RSS (VmHWM) |")
        p("|---|---|---|---|---|---|---|")
        rows = [
            ("b.rust", "Rust", "default (adaptive chunksize, in-flight 2)"),
            ("b.rust.cs1", "Rust", "--chunksize 1"),
            ("b.rust.cs100", "Rust", "--chunksize 100"),
            ("b.rust.cs1000", "Rust", "--chunksize 1000"),
            ("b.rust.cs10000", "Rust", "--chunksize 10000"),
            ("b.rust.inflight8", "Rust", "--in-flight 8"),
            ("b.rust.stdin", "Rust", "--input - (stdin)"),
            ("b.rust.w1", "Rust", "--workers 1"),
            ("b.rust.thread-executor", "Rust", "--executor thread (one worker process, 2 threads)"),
            ("b.loop", "Rust", "no pool: one thread, serde_json in and out (crates/tasks/examples/age_loop.rs)"),
            ("b.py.serial", "Python", "no pool (plain map in one process)"),
        ]
        for ex, exname in (("process", "ProcessPoolExecutor.map"), ("mp", "multiprocessing.Pool.imap")):
            for parse in ("parent", "worker"):
                for cs in (1, 100, 1000, 10000):
                    rows.append((f"b.py.{ex}.{parse}.cs{cs}", "Python", f"{exname}, parse in {parse}, chunksize {cs}"))
        for i, prog, cfg in rows:
            if i not in R:
                continue
            approx = R[i].get("scale", 1) != 1
            mark = " **best Python**" if i == b_best else ""
            p(f"| {prog} | {cfg}{mark} | {cell(i, approx=approx)} | {rate(i)} | {cell(i, 'self_cpu_s', 2, approx)} | "
              f"{cell(i, 'children_cpu_s', 2, approx)} | {mb(med(i, 'hwm_kb'))} |")
        p("")
        t = R.get("b.rust.threads")
        if t and t.get("runs") and "threads" in t["runs"][0]:
            r0 = t["runs"][0]
            th = ", ".join(f"`{k}` {v:.2f} s" for k, v in sorted(r0["threads"].items(), key=lambda kv: -kv[1]))
            p(f"Where the coordinator's CPU goes (one run of the default config, per-thread "
              f"utime+stime sampled from /proc every 20 ms, last sample per thread): {th}; "
              f"process total {r0.get('self_cpu_s', 0):.2f} s; workers {r0.get('children_cpu_s', 0):.2f} s; "
              f"wall {r0['wall_s']:.3f} s.\n")

    # ---------------------------------------------------------------- c
    if any(k.startswith("c.") for k in R):
        p(f"## c. In-memory map of {N:,} records, 2 workers (only the map is timed; pool started and warmed up first)\n")
        p("| program | config | map time | records/s |")
        p("|---|---|---|---|")
        rows = [("c.rust", "Rust `Pool::map` (crates/pool/examples/inmem.rs)", "default chunksize"),
                ("c.rust.cs1000", "Rust `Pool::map`", "chunk_size 1000"),
                ("c.rust.cs10000", "Rust `Pool::map`", "chunk_size 10000"),
                ("c.py.serial", "Python", "no pool (plain map)")]
        for ex, exname in (("process", "ProcessPoolExecutor.map"), ("mp", "multiprocessing.Pool.imap")):
            for cs in (1000, 10000):
                rows.append((f"c.py.{ex}.cs{cs}", f"Python {exname}", f"chunksize {cs}"))
        if not c_rust:
            p("| Rust | the inmem example did not build | – | – |")
        for i, prog, cfg in rows:
            if i in R:
                v = med(i, "out_seconds")
                p(f"| {prog} | {cfg} | {cell(i, 'out_seconds')} | {'–' if v is None else f'{N / v:,.0f}/s'} |")
        p("")

    # ---------------------------------------------------------------- d
    if any(k.startswith("d.") for k in R):
        p("## d. Start-up: K records through K workers\n")
        p("Rust: whole `coordinator --workers K --task age --input F_K --work-ms 0` process, and its own "
          "\"K workers ready … in X s\" log line (spawn + handshake of every worker). Python: whole "
          "`py_pool.py startup` process (interpreter start included), and in-process time from creating "
          "the ProcessPoolExecutor until each of the K workers has handled one record (a barrier makes "
          "each take exactly one).\n")
        p("| K | Rust whole process | Rust \"workers ready\" | Python fork: whole process | fork: pool → all K handled one | Python spawn: whole process | spawn: pool → all K handled one |")
        p("|---|---|---|---|---|---|---|")
        for k in (1, 2, 4, 8, 16):
            if f"d.rust.{k}" in R or f"d.py.fork.{k}" in R:
                p(f"| {k} | {cell(f'd.rust.{k}')} | {cell(f'd.rust.{k}', 'ready_s')} | {cell(f'd.py.fork.{k}')} | "
                  f"{cell(f'd.py.fork.{k}', 'out_ready_s')} | {cell(f'd.py.spawn.{k}')} | {cell(f'd.py.spawn.{k}', 'out_ready_s')} |")
        p("")

    # ---------------------------------------------------------------- e
    if any(k.startswith("e.") for k in R):
        p(f"## e. CPU scaling: {PC} records of primes below {PN:,} (2 cores)\n")
        p("Python's sieve is the same odd-only algorithm; its inner marking loop is one bytearray slice "
          "assignment (runs in C), so this compares pool overhead and scaling more than languages. "
          "The GIL rows run the same work in threads: Python's ThreadPoolExecutor cannot overlap it; "
          "Rust's `locked` task holds a process-wide mutex, which does not stop separate worker processes.\n")
        p("| program | 1 worker | 2 workers | 4 workers | speed-up 1→2 |")
        p("|---|---|---|---|---|")
        rows = [("e.rust", "Rust `--task primes` (processes)"),
                ("e.py.process", "Python ProcessPoolExecutor"),
                ("e.py.mp", "Python multiprocessing.Pool"),
                ("e.rust.locked", "Rust `--task locked` (processes, per-process lock)"),
                ("e.py.thread", "Python ThreadPoolExecutor (GIL)")]
        for i, name in rows:
            if f"{i}.1" in R:
                p(f"| {name} | {cell(i + '.1')} | {cell(i + '.2')} | {cell(i + '.4')} | {ratio(med(i + '.1'), med(i + '.2'))} |")
        if "e.rust.small.1" in R:
            p(f"\nPure-Python inner loop (element by element), {PC} records of primes below 2,000,000 (10× smaller n):\n")
            p("| program | 1 worker | 2 workers | 4 workers | speed-up 1→2 |")
            p("|---|---|---|---|---|")
            for i, name in (("e.rust.small", "Rust `--task primes`"),
                            ("e.py.loop.process", "Python ProcessPoolExecutor, loop sieve"),
                            ("e.py.loop.thread", "Python ThreadPoolExecutor, loop sieve (GIL)")):
                if f"{i}.1" in R:
                    p(f"| {name} | {cell(i + '.1')} | {cell(i + '.2')} | {cell(i + '.4')} | {ratio(med(i + '.1'), med(i + '.2'))} |")
        p("")

    # ---------------------------------------------------------------- f, g
    if any(k.startswith(("f.", "g.")) for k in R) or "b.rust" in R:
        p("## f, g. Coordinator memory and CPU per record (age, 2 workers, file → file)\n")
        p("Peak RSS: `/usr/bin/time -v` \"Maximum resident set size\" (the largest single process of the "
          "tree: the coordinator here) and the coordinator's own VmHWM. CPU: the coordinator process's own "
          "utime+stime (all its threads, none of the workers'), read exactly from /proc/<pid>/stat once it "
          "has exited and before it is reaped (waitid WNOWAIT); workers' CPU is the cutime+cstime of the same "
          "read (the workers it reaped). Clock-tick resolution: 10 ms.\n")
        p("| records | wall | peak RSS (time -v) | coordinator VmHWM | coordinator CPU | per record | workers' CPU | per record |")
        p("|---|---|---|---|---|---|---|---|")
        for n, fid, gid in ((N, "f.rust.n", "b.rust"), (BIG, "f.rust.big", "g.rust.big")):
            if not n or (fid not in R and gid not in R):
                continue
            p(f"| {n:,} | {cell(gid)} | {mb(med(fid, 'timev_maxrss_kb'))} | {mb(med(fid, 'hwm_kb'))} | "
              f"{cell(gid, 'self_cpu_s', 2)} | {per_rec_ns(gid, 'self_cpu_s', n)} | {cell(gid, 'children_cpu_s', 2)} | "
              f"{per_rec_ns(gid, 'children_cpu_s', n)} |")
        p("")

    nproc = int(META.get("nproc") or os.cpu_count() or 1)
    noisy = []
    for k, r in R.items():
        shares = [(0.0 if x["other_cpu_s"] < 0.05 else x["other_cpu_s"] / (x["wall_s"] * nproc))
                  for x in r.get("runs", []) if x.get("wall_s") and "other_cpu_s" in x]
        if shares:
            sh = sorted(shares)[len(shares) // 2]
            if sh > 0.05:
                noisy.append(f"`{k}` {sh:.0%}")
    p("## Noise\n")
    if noisy:
        p("Measurements during which other processes used more than 5% of the machine "
          "(median over runs, share of all CPUs, after redoing each run up to twice while that share was over 10%; "
          "the harness also waits up to 20 s for an idle machine before each run; under 0.05 CPU-s counts as 0): "
          + ", ".join(noisy) + ".\n")
    else:
        p("No measurement saw other processes use more than 5% of the machine (median over runs).\n")

    fails = [k for k in R if failed(k)]
    if fails:
        p("## Failed measurements\n")
        for k in fails:
            p(f"- `{k}`: {R[k]['error'][:400]}")
        p("")


if __name__ == "__main__":
    main()
