#!/usr/bin/env bash
# Where the Rust side's time goes in scenario (b): 1M tiny `age` records,
# file -> file, 2 workers. Writes bench-out/where.md (and prints it).
#
#   scripts/where_time_goes.sh [--records N] [--no-perf]
#
# Needs the binaries of scripts/bench.sh (bench-out/bin, else target/release).
# 1. Per-thread CPU of the coordinator (/proc/<pid>/task/*/stat, sampled every
#    20 ms by measure.py --threads) and the workers' CPU (exact, from the
#    exited coordinator's cutime+cstime), median of 5 runs, for variants that
#    isolate one cost each:
#      base         the scientists file ("nobel":"yes"/"no")
#      nobel-bool   the same records with "nobel":true/false (no yes/no words)
#      devnull      output to /dev/null
#      stdin        --input - (JSON lines from stdin)
#      log-warn     RUST_LOG=warn (workers skip the per-record log-budget check)
#      tiny         --task primes over {"n":1}: the smallest record and output
# 2. If `perf` works: a profile of one base run, by thread and by symbol.
set -euo pipefail
N=1000000
PERF=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --records) N="$2"; shift ;;
        --no-perf) PERF=0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="$ROOT/bench-out"
mkdir -p "$OUT"
C="$OUT/bin/coordinator"
[[ -x "$C" ]] || C="$ROOT/target/release/coordinator"
T=/tmp/procpool-where
mkdir -p "$T"
trap 'rm -rf "$T"' EXIT

python3 scripts/gen_data.py "$N" "$T/age.jsonl"
sed 's/"nobel":"yes"/"nobel":true/; s/"nobel":"no"/"nobel":false/' "$T/age.jsonl" > "$T/age_bool.jsonl"
python3 scripts/gen_data.py "$N" "$T/tiny.jsonl" --kind primes --n 1
RES="$T/where.jsonl"
m() { python3 scripts/measure.py --results "$RES" --runs 5 --threads --records "$N" "$@"; }
A=(--workers 2 --year 2024)
export RUST_LOG=info
m --id base -- "$C" --task age --input "$T/age.jsonl" --output "$T/o.jsonl" "${A[@]}"
m --id nobel-bool -- "$C" --task age --input "$T/age_bool.jsonl" --output "$T/o.jsonl" "${A[@]}"
m --id devnull -- "$C" --task age --input "$T/age.jsonl" --output /dev/null "${A[@]}"
m --id stdin --stdin "$T/age.jsonl" -- "$C" --task age --input - --output "$T/o.jsonl" "${A[@]}"
RUST_LOG=warn m --id log-warn -- "$C" --task age --input "$T/age.jsonl" --output "$T/o.jsonl" "${A[@]}"
m --id tiny -- "$C" --task primes --input "$T/tiny.jsonl" --output "$T/o.jsonl" --workers 2

{
    echo "# Where the time goes: $N records, 2 workers, file -> file ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs)"
    echo
    echo "Medians of 5 runs. Thread CPU: utime+stime per coordinator thread (sampled every 20 ms, last sample);"
    echo "coordinator and workers' totals are exact (from the exited, unreaped coordinator's /proc stat)."
    echo
    python3 - "$RES" "$N" <<'EOF'
import json, statistics as st, sys
n = int(sys.argv[2])
rows = [json.loads(l) for l in open(sys.argv[1])]
# Thread names as the coordinator sets them (they change with the code): all seen.
tot = {}
for r in rows:
    for x in r["runs"]:
        for t, v in x.get("threads", {}).items():
            tot[t] = tot.get(t, 0.0) + v
names = [t for t, v in sorted(tot.items(), key=lambda kv: -kv[1]) if v > 0]
print("| variant | wall | coordinator CPU | " + " | ".join(f"`{t}`" for t in names) + " | workers' CPU | total CPU / wall |")
print("|---|---|---|" + "---|" * len(names) + "---|---|")
for r in rows:
    if "median" not in r:
        print(f"| {r['id']} | FAILED | |" + " |" * len(names) + " | |")
        continue
    med = r["median"]
    th = {t: st.median([x.get("threads", {}).get(t, 0.0) for x in r["runs"]]) for t in names}
    ns = lambda s: f"{s:.2f} s ({s / n * 1e9:,.0f} ns/rec)"
    par = (med["self_cpu_s"] + med["children_cpu_s"]) / med["wall_s"]
    print(f"| {r['id']} | {med['wall_s']:.3f} s | {ns(med['self_cpu_s'])} | "
          + " | ".join(ns(th[t]) for t in names)
          + f" | {ns(med['children_cpu_s'])} | {par:.2f} |")
EOF
    if [[ $PERF == 1 ]] && command -v perf >/dev/null && perf stat -e task-clock true >/dev/null 2>&1; then
        perf record -q -o "$T/perf.data" -F 1999 -g -- "$C" --task age --input "$T/age.jsonl" --output "$T/o.jsonl" "${A[@]}" 2>/dev/null >/dev/null || true
        echo
        echo "## perf (one base run, coordinator and workers): samples by thread and library"
        echo
        echo '```'
        perf report -i "$T/perf.data" --no-children -g none --sort comm,dso --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -15
        echo '```'
        echo
        echo "## perf: top symbols by thread"
        echo
        echo '```'
        perf report -i "$T/perf.data" --no-children -g none --sort comm,sym --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -40 | cut -c1-160
        echo '```'
    fi
} > "$OUT/where.md"
cat "$OUT/where.md"
