#!/usr/bin/env bash
# Start-up of this work tree against another commit's, side by side.
#
#   scripts/startup-vs.sh [--runs N] [--workers K] REV
#
# Builds REV in a worktree of its own (under ${TMPDIR:-/tmp}, kept for the
# next call) and this tree, release profile, then alternates, N times each:
#   - the command line: `coordinator --workers K` on K records (whole process);
#   - the library: `examples/startup.rs` (build() until K workers have each
#     handled a record; the median of 7 per call).
# Prints the medians, their ratio and the median of the pairs' ratios
# (this tree / REV). Example: scripts/startup-vs.sh 8299afb
set -euo pipefail

RUNS=21
K=16
while [[ $# -gt 1 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift ;;
        --workers) K="$2"; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
REV="${1:?usage: scripts/startup-vs.sh [--runs N] [--workers K] REV}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
SHA="$(git -C "$HERE" rev-parse --short "$REV")"
WT="${TMPDIR:-/tmp}/procpool-startup-$SHA"

build() { # DIR: the release binaries and the start-up example
    (cd "$1" && CARGO_TARGET_DIR="$1/target" cargo build --release --workspace -q &&
        CARGO_TARGET_DIR="$1/target" cargo build --release -q -p procpool --example startup) >&2
}
if [[ ! -d "$WT" ]]; then
    git -C "$HERE" worktree add -q --detach "$WT" "$SHA"
fi
echo "building $SHA in $WT and this tree" >&2
build "$WT"
build "$HERE"

IN="$(mktemp)"
trap 'rm -f "$IN" "$IN.times"' EXIT
python3 "$HERE/scripts/gen_data.py" "$K" "$IN" >/dev/null 2>&1

ms() { # CMD...: wall time of one run, in ms
    local s e
    s=$(date +%s%N)
    "$@" >/dev/null 2>&1
    e=$(date +%s%N)
    echo "scale=2; ($e - $s) / 1000000" | bc
}
lib() { # DIR: the library example's median for K workers, in ms
    "$1/target/release/examples/startup" --worker-bin "$1/target/release/worker" --runs 7 2>/dev/null |
        python3 -c "import json,sys; print(next(r['median_ms'] for r in map(json.loads, sys.stdin) if r['workers'] == $K))"
}
cli() { # DIR
    ms "$1/target/release/coordinator" --workers "$K" --task age --input "$IN" --work-ms 0 --output /dev/null --year 2024
}
for _ in $(seq "$RUNS"); do
    echo "$(cli "$WT") $(cli "$HERE") $(lib "$WT") $(lib "$HERE")" >> "$IN.times"
done
python3 - "$IN.times" "$SHA" "$K" "$RUNS" <<'EOF'
import statistics as st, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
sha, k, runs = sys.argv[2], sys.argv[3], sys.argv[4]
for name, (a, b) in [("command line", (0, 1)), ("library", (2, 3))]:
    old, new = [r[a] for r in rows], [r[b] for r in rows]
    pairs = st.median(n / o for o, n in zip(old, new))
    print(f"{name}, {k} workers, {runs} alternating runs: {sha} {st.median(old):.2f} ms, "
          f"this tree {st.median(new):.2f} ms: {st.median(new) / st.median(old):.3f}x "
          f"(median of the pairs' ratios {pairs:.3f}x)")
EOF
