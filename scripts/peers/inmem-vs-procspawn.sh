#!/usr/bin/env bash
# In-memory `map` of tiny `age` records: procpool's library against
# `procspawn::Pool` with hand-made batches, side by side (alternating runs),
# medians. Usage: scripts/peers/inmem-vs-procspawn.sh [RUNS] [RECORDS] [WORKERS] [BATCH]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs="${1:-7}" records="${2:-1000000}" workers="${3:-2}" batch="${4:-10000}"

cargo build --quiet --release --locked -p procpool-worker-bin
cargo build --quiet --release --locked -p procpool --example inmem
# Not --locked: its path dependencies move with the workspace.
(cd scripts/peers/procspawn-bench && cargo build --quiet --release)

ours=() peer=()
for _ in $(seq "$runs"); do
    ours+=("$(target/release/examples/inmem --records "$records" --workers "$workers" \
        --worker-bin target/release/worker 2>/dev/null | sed 's/.*"seconds":\([0-9.]*\).*/\1/')")
    peer+=("$(scripts/peers/procspawn-bench/target/release/procspawn-bench --records "$records" \
        --workers "$workers" --batch "$batch" </dev/null 2>/dev/null | sed 's/.*"seconds":\([0-9.]*\).*/\1/')")
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
echo "in-memory map, $records records, $workers workers, median of $runs (seconds)"
echo "procpool (adaptive batches)        $(median "${ours[@]}")   runs: ${ours[*]}"
echo "procspawn::Pool (batches of $batch) $(median "${peer[@]}")   runs: ${peer[*]}"
