#!/usr/bin/env bash
# The MPI backend against the local backend on one machine: the 1M tiny
# records file-to-file job (`age`), and `primes` scaling, over Open MPI's
# shared memory and over TCP, with worker ranks started beside the
# coordinator (MPMD) or spawned by it (`--workers N`). Medians of --runs
# (default 3) whole-job wall times, side by side in one run, with each MPI
# row's ratio to the local one.
#
#   scripts/bench-mpi.sh [--runs N] [--workers N]
#
# Needs Open MPI and libclang (see the README's MPI section); builds the MPI
# feature into target/release. On a busy machine the figures are noise:
# measure on a quiet one.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=3 W=4
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --workers) W=$2; shift 2 ;;
        *) echo "usage: $0 [--runs N] [--workers N]" >&2; exit 2 ;;
    esac
done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 RUST_LOG=warn
# More ranks than cores is the point of the comparison: allow it.
export OMPI_MCA_rmaps_base_oversubscribe=1
cargo build --release -q -p procpool-coordinator -p procpool-worker-bin \
    --features procpool-coordinator/mpi,procpool-worker-bin/mpi
B=target/release
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
python3 scripts/gen_data.py 1000000 "$TMP/age.jsonl"
python3 -c "
for i in range(2400): print('{\"n\": 1000000}')" > "$TMP/primes.jsonl"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
BASE=0
time_runs() { # label, command...
    local label=$1; shift
    local t
    t=$(for _ in $(seq "$RUNS"); do
        local s=$EPOCHREALTIME
        "$@" >/dev/null 2>"$TMP/err" || { echo "failed: $*" >&2; tail -5 "$TMP/err" >&2; exit 1; }
        awk -v s="$s" -v e="$EPOCHREALTIME" 'BEGIN { print e - s }'
    done | median)
    case "$label" in
        *local*) BASE=$t; printf '| %s | %.3f s | 1.00 |\n' "$label" "$t" ;;
        *) printf '| %s | %.3f s | %.2f |\n' "$label" "$t" "$(awk -v a="$t" -v b="$BASE" 'BEGIN { print a / b }')" ;;
    esac
}
mpmd() { # ranks, btl, coordinator args...
    local ranks=$1 btl=$2; shift 2
    # Unbound, like local workers: Open MPI binds each rank to one core when
    # there are at most two, which pins the coordinator's threads to one core.
    local opts=(--bind-to none)
    [[ $btl == tcp ]] && opts+=(--mca btl tcp,self)
    mpirun "${opts[@]}" -n 1 $B/coordinator --backend mpi "$@" : -n "$ranks" $B/worker
}
spawned() { # ranks, coordinator args... (an MPI singleton spawning its workers)
    local ranks=$1; shift
    $B/coordinator --backend mpi --workers "$ranks" "$@"
}

echo "| job | wall (median of $RUNS) | vs local |"
echo "|---|---|---|"
AGE=(--task age --year 2024 --input "$TMP/age.jsonl" --output "$TMP/out.jsonl")
time_runs "1M age records, file to file, local, $W workers" $B/coordinator --workers "$W" "${AGE[@]}"
time_runs "1M age records, MPI shared memory, $W worker ranks" mpmd "$W" shm "${AGE[@]}"
time_runs "1M age records, MPI, $W ranks spawned by the coordinator (TCP between jobs)" spawned "$W" "${AGE[@]}"
time_runs "1M age records, MPI TCP, $W worker ranks" mpmd "$W" tcp "${AGE[@]}"
P=(--task primes --input "$TMP/primes.jsonl" --output "$TMP/p.jsonl")
for w in 1 2; do
    time_runs "primes 2400 x n=1M, local, $w workers" $B/coordinator --workers $w "${P[@]}"
    time_runs "primes 2400 x n=1M, MPI shared memory, $w worker ranks" mpmd $w shm "${P[@]}"
    time_runs "primes 2400 x n=1M, MPI TCP, $w worker ranks" mpmd $w tcp "${P[@]}"
done
