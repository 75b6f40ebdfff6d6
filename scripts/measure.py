#!/usr/bin/env python3
"""Run a command R times and record medians: the timing harness of bench.sh.

    measure.py --id b.rust --runs 5 --results bench-out/results.jsonl \
        [--records N] [--stdin FILE] [--stdout-json] [--timev] [--threads] \
        [--scale X] [--alternate 'CMD2 ARGS' --alternate-id b.loop] -- CMD ARGS...

With --alternate, each run of CMD is followed by one of CMD2 (recorded under
its own id), and CMD's record also holds each pair's wall-time ratio and their
median (pair_ratio): a ratio measured side by side, run against run, which a
machine whose speed drifts from one minute to the next disturbs least.

Per run it records:
  wall_s        wall-clock time from spawn to exit (time.perf_counter).
  self_cpu_s    user+sys CPU of the launched process ALONE (all its threads, none
                of its children). How: the harness waits with
                waitid(WEXITED | WNOWAIT), which returns once the process has
                exited but leaves it a zombie; the kernel has by then folded every
                thread's CPU time into the process, so /proc/<pid>/stat fields
                utime+stime are final and exact (to the clock tick, 10 ms), and
                cutime+cstime hold the CPU of the children it reaped (the
                workers). Only then is the zombie reaped with wait4. No sampling,
                no subtraction of estimates: this is how scenario (g) gets the
                coordinator's own CPU cost.
  children_cpu_s  cutime+cstime of the zombie (the reaped workers, Rust side; for
                Python, its worker processes).
  tree_user_s / tree_sys_s  wait4 rusage: the process and all reaped descendants.
  maxrss_kb     wait4 ru_maxrss: the largest RSS of any ONE process of the tree
                (the same number /usr/bin/time -v prints).
  hwm_kb        VmHWM of the measured process alone, read from /proc/<pid>/status
                every 20 ms while it runs (a high-water mark, so the last read is
                its peak unless it grew in its last 20 ms).
  timev_maxrss_kb  with --timev, the command runs under `/usr/bin/time -v` and
                this is its "Maximum resident set size" (self_cpu_s then refers to
                `time` itself and is dropped; hwm_kb is then the coordinator's,
                found as the child of `time`).
  ready_s       the coordinator's "N workers ready (...) in X s" log line, if any.
  out_*         numeric fields of a JSON object on the last stdout line (--stdout-json).
  other_cpu_s   CPU-seconds the rest of the machine used during the run (from
                /proc/stat, minus the command's and the harness's own): other jobs' noise. Before each
                run the harness waits (up to --quiet-wait s) for the machine to be idle.
  threads       with --threads: CPU seconds per thread name of the measured
                process, from /proc/<pid>/task/*/stat sampled every 20 ms (last
                sample per thread; a diagnostic, not used for the medians).

--scale X multiplies wall_s and the CPU figures by X in the medians (used to
extrapolate a 20k-record sample to 1M records; the raw values stay in "runs").
A run during which other processes used more than --max-noise (10%) of the
machine is done again, at most --retries (2) times; the least noisy attempt is kept.
A run that exits non-zero is recorded with "error" and no medians.
"""

import argparse
import shlex
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

CLK = os.sysconf("SC_CLK_TCK")
READY_RE = re.compile(r"(\d+) workers ready \(pids [^)]*\) in ([0-9.]+) s")


def read_stat(path):
    with open(path) as f:
        s = f.read()
    comm = s[s.index("(") + 1 : s.rindex(")")]
    fields = s[s.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime is field 14 -> fields[11]
    return comm, fields


def cpu_busy_s():
    """System-wide busy CPU seconds so far (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK


def wait_quiet(max_wait, threshold=0.25, probe=0.2):
    """Wait (at most max_wait s) until the rest of the machine uses under
    `threshold` of one CPU over a `probe`-second window. Returns the seconds waited."""
    t0 = time.monotonic()
    while True:
        b0 = cpu_busy_s()
        time.sleep(probe)
        if (cpu_busy_s() - b0) / probe < threshold or time.monotonic() - t0 >= max_wait:
            return time.monotonic() - t0


def children_of(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


class Sampler(threading.Thread):
    def __init__(self, pid, find_child, threads):
        super().__init__(daemon=True)
        self.pid, self.find_child, self.want_threads = pid, find_child, threads
        self.target = None if find_child else pid
        self.hwm = 0
        self.threads = {}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            if self.target is None:
                kids = children_of(self.pid)
                if kids:
                    self.target = kids[0]
            if self.target is not None:
                try:
                    with open(f"/proc/{self.target}/status") as f:
                        for line in f:
                            if line.startswith("VmHWM:"):
                                self.hwm = max(self.hwm, int(line.split()[1]))
                                break
                except OSError:
                    pass
                if self.want_threads:
                    try:
                        for tid in os.listdir(f"/proc/{self.target}/task"):
                            try:
                                comm, f = read_stat(f"/proc/{self.target}/task/{tid}/stat")
                            except OSError:
                                continue
                            self.threads[(tid, comm)] = (int(f[11]) + int(f[12])) / CLK
                    except OSError:
                        pass
            self.stop.wait(0.02)


def one_run(a, cmd):
    env = dict(os.environ)
    for kv in a.env:
        k, v = kv.split("=", 1)
        env[k] = v
    timev_file = None
    if a.timev:
        fd, timev_file = tempfile.mkstemp(prefix="timev.", dir="/tmp")
        os.close(fd)
        cmd = ["/usr/bin/time", "-v", "-o", timev_file] + cmd
    stdin = open(a.stdin, "rb") if a.stdin else subprocess.DEVNULL
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    waited = wait_quiet(a.quiet_wait) if a.quiet_wait > 0 else 0.0
    me0 = resource.getrusage(resource.RUSAGE_SELF)
    busy0 = cpu_busy_s()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=stdin, stdout=out, stderr=err, env=env)
    sampler = Sampler(p.pid, a.timev, a.threads)
    sampler.start()
    os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
    wall = time.perf_counter() - t0
    busy1 = cpu_busy_s()
    me1 = resource.getrusage(resource.RUSAGE_SELF)
    harness = (me1.ru_utime - me0.ru_utime) + (me1.ru_stime - me0.ru_stime)
    sampler.stop.set()
    sampler.join()
    _, f = read_stat(f"/proc/{p.pid}/stat")
    utime, stime, cutime, cstime = (int(x) / CLK for x in f[11:15])
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if a.stdin:
        stdin.close()
    out.seek(0)
    err.seek(0)
    stdout = out.read().decode("utf-8", "replace")
    stderr = err.read().decode("utf-8", "replace")
    r = {
        "wall_s": wall,
        "tree_user_s": ru.ru_utime,
        "tree_sys_s": ru.ru_stime,
        "maxrss_kb": ru.ru_maxrss,
        "hwm_kb": sampler.hwm or None,
        # CPU used on the machine during the run by anything but this command
        # and the harness itself: other jobs' noise.
        "other_cpu_s": max(0.0, (busy1 - busy0) - ru.ru_utime - ru.ru_stime - harness),
        "quiet_wait_s": waited,
    }
    if not a.timev:
        r.update(self_cpu_s=utime + stime, self_user_s=utime, self_sys_s=stime, children_cpu_s=cutime + cstime)
    else:
        with open(timev_file) as fh:
            tv = fh.read()
        os.unlink(timev_file)
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", tv)
        r["timev_maxrss_kb"] = int(m.group(1)) if m else None
        if "Command exited with non-zero status" in tv:
            p.returncode = int(re.search(r"non-zero status (\d+)", tv).group(1))
    m = READY_RE.search(stderr)
    if m:
        r["ready_s"] = float(m.group(2))
    if a.stdout_json:
        lines = [l for l in stdout.strip().splitlines() if l.strip()]
        if lines:
            try:
                for k, v in json.loads(lines[-1]).items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        r["out_" + k] = v
            except ValueError:
                pass
    if a.threads:
        by_name = {}
        for (tid, comm), cpu in sampler.threads.items():
            by_name[comm] = round(by_name.get(comm, 0) + cpu, 3)
        r["threads"] = by_name
    if p.returncode != 0:
        r["error"] = f"exit {p.returncode}: " + stderr.strip()[-600:]
    return r


SCALED = {"wall_s", "self_cpu_s", "self_user_s", "self_sys_s", "children_cpu_s", "tree_user_s", "tree_sys_s"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--id", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--results", default="bench-out/results.jsonl")
    ap.add_argument("--records", type=int, help="records processed (for per-record figures)")
    ap.add_argument("--stdin")
    ap.add_argument("--stdout-json", action="store_true")
    ap.add_argument("--timev", action="store_true")
    ap.add_argument("--threads", action="store_true")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--quiet-wait", type=float, default=20.0,
                    help="before each run, wait up to this many seconds for other load to stop (0: don't)")
    ap.add_argument("--max-noise", type=float, default=0.10,
                    help="redo a run if other processes used more than this share of the machine")
    ap.add_argument("--retries", type=int, default=2, help="redos per run at most (see --max-noise)")
    ap.add_argument("--env", action="append", default=[], help="K=V added to the environment")
    ap.add_argument("--alternate", metavar="CMD",
                    help="a second command (one shell-quoted string), run after each run of the first: "
                         "its runs are recorded under --alternate-id, and the first's record gets the "
                         "wall-time ratio of each pair and their median (pair_ratio)")
    ap.add_argument("--alternate-id", help="the id of the --alternate command's runs")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        ap.error("no command")
    other = shlex.split(a.alternate) if a.alternate else None
    if other is not None and not a.alternate_id:
        ap.error("--alternate needs --alternate-id")

    nproc = os.cpu_count() or 1

    def noise(r):
        # Share of the machine used by others; under 0.05 CPU-s is clock-tick noise.
        o = r.get("other_cpu_s", 0.0)
        return 0.0 if o < 0.05 else o / (r["wall_s"] * nproc)

    def measured(command):
        """One run of `command`: a run during which other jobs used over
        --max-noise of the machine is done again (at most --retries times);
        the least noisy attempt is kept. Returns it and the redos."""
        attempts = []
        for _ in range(1 + a.retries):
            r = one_run(a, command)
            attempts.append(r)
            if "error" in r or noise(r) <= a.max_noise:
                break
        r = min(attempts, key=noise)
        if "error" in attempts[-1]:
            r = attempts[-1]
        r["noise"] = round(noise(r), 3)
        return r, len(attempts) - 1

    # The runs of each command (the second's only with --alternate), in turn.
    commands = [cmd] + ([other] if other is not None else [])
    runs_of = [[] for _ in commands]
    redone = 0
    for _ in range(a.runs):
        for command, kept in zip(commands, runs_of):
            r, n = measured(command)
            redone += n
            kept.append(r)
        if any("error" in kept[-1] for kept in runs_of):
            break
    runs, others = runs_of[0], runs_of[-1]
    if other is not None:
        write_record(a, a.alternate_id, other, others, 0)
    rec = {"id": a.id, "t": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cmd": cmd,
           "records": a.records, "scale": a.scale, "redone_runs": redone, "runs": runs}
    if other is not None and others and all("wall_s" in r for r in runs + others):
        rec["pair_ratios"] = [round(r["wall_s"] / o["wall_s"], 4) for r, o in zip(runs, others)]
        rec["pair_ratio"] = statistics.median(rec["pair_ratios"])
        rec["pair_with"] = a.alternate_id
    finish_record(a, rec)


def write_record(a, rid, cmd, runs, redone):
    """The record of `runs` of `cmd` under id `rid`, appended to the results."""
    rec = {"id": rid, "t": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cmd": cmd,
           "records": a.records, "scale": a.scale, "redone_runs": redone, "runs": runs}
    finish_record(a, rec)


def finish_record(a, rec):
    """Medians of `rec`'s runs; append it to the results and print a line."""
    runs = rec["runs"]
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        rec["error"] = errors[0]
    else:
        keys = sorted({k for r in runs for k, v in r.items() if isinstance(v, (int, float)) and v is not None})
        med = {}
        for k in keys:
            vals = [r[k] for r in runs if isinstance(r.get(k), (int, float))]
            if vals:
                med[k] = statistics.median(vals) * (a.scale if k in SCALED else 1.0)
        rec["median"] = med
    os.makedirs(os.path.dirname(os.path.abspath(a.results)), exist_ok=True)
    with open(a.results, "a") as f:
        f.write(json.dumps(rec) + "\n")
    if errors:
        print(f"  {rec['id']}: FAILED: {errors[0][:300]}", file=sys.stderr)
    else:
        walls = ", ".join(f"{r['wall_s']:.3f}" for r in runs)
        extra = ""
        if "self_cpu_s" in rec["median"]:
            extra = f" self_cpu {rec['median']['self_cpu_s']:.2f}s children {rec['median']['children_cpu_s']:.2f}s"
        if "pair_ratio" in rec:
            extra += f"; / {rec['pair_with']}, median of the pairs' ratios {rec['pair_ratio']:.3f}"
        print(f"  {rec['id']}: median wall {rec['median']['wall_s']:.3f} s (runs: {walls}){extra}", file=sys.stderr)


if __name__ == "__main__":
    main()
