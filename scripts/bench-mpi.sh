#!/usr/bin/env bash
# The MPI backend against the local backend on one machine: the 1M-record
# file-to-file job and `primes` scaling, over Open MPI's shared memory and
# over TCP. Medians of --runs (default 3) whole-job wall times.
#
#   scripts/bench-mpi.sh [--runs N]
#
# Needs Open MPI and libclang (see the README's MPI section); builds the MPI
# feature into target/release.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=3
[[ "${1:-}" == --runs ]] && RUNS="$2"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 RUST_LOG=warn
cargo build --release -q -p procpool-coordinator -p procpool-worker-bin \
    --features procpool-coordinator/mpi,procpool-worker-bin/mpi
B=target/release
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
python3 scripts/gen_data.py 1000000 "$TMP/age.jsonl"
python3 -c "
for i in range(2400): print('{\"n\": 1000000}')" > "$TMP/primes.jsonl"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
time_runs() { # label, command...
    local label=$1; shift
    local t
    t=$(for _ in $(seq "$RUNS"); do
        local s=$EPOCHREALTIME
        "$@" >/dev/null 2>&1
        awk -v s="$s" -v e="$EPOCHREALTIME" 'BEGIN { print e - s }'
    done | median)
    printf '| %s | %.3f s |\n' "$label" "$t"
}
mpi() { # ranks, btl, coordinator args...
    local ranks=$1 btl=$2; shift 2
    local opts=(--oversubscribe)
    [[ $btl == tcp ]] && opts+=(--mca btl tcp,self)
    mpirun "${opts[@]}" -n 1 $B/coordinator --backend mpi "$@" : -n "$ranks" $B/worker
}

echo "| job | wall (median of $RUNS) |"
echo "|---|---|"
AGE=(--task age --year 2024 --input "$TMP/age.jsonl" --output "$TMP/out.jsonl")
time_runs "1M age records, file to file, local, 2 workers" $B/coordinator --workers 2 "${AGE[@]}"
time_runs "1M age records, MPI shared memory, 2 worker ranks" mpi 2 shm "${AGE[@]}"
time_runs "1M age records, MPI TCP, 2 worker ranks" mpi 2 tcp "${AGE[@]}"
P=(--task primes --input "$TMP/primes.jsonl" --output "$TMP/p.jsonl")
for w in 1 2; do
    time_runs "primes 2400 x n=1M, local, $w workers" $B/coordinator --workers $w "${P[@]}"
    time_runs "primes 2400 x n=1M, MPI shared memory, $w worker ranks" mpi $w shm "${P[@]}"
    time_runs "primes 2400 x n=1M, MPI TCP, $w worker ranks" mpi $w tcp "${P[@]}"
done
