#!/usr/bin/env bash
# Run an MPI procpool job until it finishes, relaunching it (the coordinator
# must have --output FILE --resume) after a failure that aborted it: a rank
# that died, went silent or was cut off. Each relaunch continues where the
# last one stopped, so the output ends byte-identical to an undisturbed run.
#
#   scripts/mpi-relaunch.sh [--attempts N] [--pause S] -- COMMAND...
#   e.g. scripts/mpi-relaunch.sh -- mpirun -n 1 coordinator --backend mpi \
#            --task primes --input in.jsonl --output out.jsonl --resume : -n 8 worker
#
# Exit codes 0 (done), 1 (records failed: rerunning would not change them)
# and 2 (bad command line or input) end the loop at once; any other (75 from
# an aborted job, or a launcher's code for a rank killed by a signal) is
# relaunched, up to --attempts times in all (default 5, or PROCPOOL_ATTEMPTS).
set -uo pipefail
ATTEMPTS=${PROCPOOL_ATTEMPTS:-5}
PAUSE=1
while [ $# -gt 0 ]; do
    case "$1" in
        --attempts) ATTEMPTS=$2; shift 2 ;;
        --pause) PAUSE=$2; shift 2 ;;
        --) shift; break ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || { echo "usage: $0 [--attempts N] [--pause S] -- COMMAND..." >&2; exit 2; }
case "$*" in *--resume*) ;; *) echo "mpi-relaunch: the coordinator needs --output FILE --resume, or a relaunch starts over" >&2; exit 2 ;; esac
for attempt in $(seq 1 "$ATTEMPTS"); do
    "$@"
    rc=$?
    case $rc in
        0|1|2) exit "$rc" ;;
    esac
    if [ "$attempt" -lt "$ATTEMPTS" ]; then
        echo "mpi-relaunch: attempt $attempt of $ATTEMPTS ended with exit code $rc; relaunching with --resume in ${PAUSE} s" >&2
        sleep "$PAUSE"
    else
        echo "mpi-relaunch: attempt $attempt of $ATTEMPTS ended with exit code $rc; giving up" >&2
        exit "$rc"
    fi
done
