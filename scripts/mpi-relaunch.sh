#!/usr/bin/env bash
# Run an MPI procpool job until it finishes, relaunching it (the coordinator
# must have --output FILE --resume) after a failure that aborted it: a rank
# that died, went silent or was cut off. Each relaunch continues where the
# last one stopped, so the output ends byte-identical to an undisturbed run.
#
#   scripts/mpi-relaunch.sh [--attempts N] [--pause S] [--stuck S] -- COMMAND...
#   e.g. scripts/mpi-relaunch.sh -- mpirun -n 1 coordinator --backend mpi \
#            --task primes --input in.jsonl --output out.jsonl --resume : -n 8 worker
#
# Exit codes 0 (done), 1 (records failed: rerunning would not change them)
# and 2 (bad command line or input) end the loop at once; any other (75 from
# an aborted job, or a launcher's code for a rank killed by a signal) is
# relaunched, up to --attempts times in all (default 5, or PROCPOOL_ATTEMPTS).
#
# A watchdog backs up the launcher's own teardown: should the command (e.g.
# mpirun) still run --stuck seconds (default 10) after every process it
# started has exited, it is killed and the attempt counts as failed (Open
# MPI 4.1's mpirun has been seen to hang in its teardown that way).
set -uo pipefail
ATTEMPTS=${PROCPOOL_ATTEMPTS:-5}
PAUSE=1
STUCK=10
while [ $# -gt 0 ]; do
    case "$1" in
        --attempts) ATTEMPTS=$2; shift 2 ;;
        --pause) PAUSE=$2; shift 2 ;;
        --stuck) STUCK=$2; shift 2 ;;
        --) shift; break ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || { echo "usage: $0 [--attempts N] [--pause S] [--stuck S] -- COMMAND..." >&2; exit 2; }
case "$*" in *--resume*) ;; *) echo "mpi-relaunch: the coordinator needs --output FILE --resume, or a relaunch starts over" >&2; exit 2 ;; esac
# Whether PID has started children and none of them is alive any more
# (exited: gone, or zombies it does not reap).
children_all_gone() {
    local states
    states=$(ps -o stat= --ppid "$1" 2>/dev/null | cut -c1 | tr -d '\n')
    case "$states" in *[!Z]*) return 1 ;; esac
    return 0
}

# Run the command; kill it if it outlives everything it started by $STUCK s.
# It runs in the background (for the watchdog), so SIGINT and SIGTERM are
# passed on to it, and end the loop.
STOPPED=""
run_watched() {
    "$@" &
    local pid=$! started=0 gone_since=""
    trap 'STOPPED=INT; kill -INT "$pid" 2>/dev/null' INT
    trap 'STOPPED=TERM; kill -TERM "$pid" 2>/dev/null' TERM
    while kill -0 "$pid" 2>/dev/null; do
        if [ -n "$(ps -o pid= --ppid "$pid" 2>/dev/null)" ]; then started=1; fi
        if [ "$started" = 1 ] && children_all_gone "$pid"; then
            gone_since=${gone_since:-$SECONDS}
            if [ $((SECONDS - gone_since)) -ge "$STUCK" ]; then
                echo "mpi-relaunch: $1 still running ${STUCK} s after every process it started exited (a launcher stuck in its teardown); killing it" >&2
                kill -KILL "$pid" 2>/dev/null
                wait "$pid" 2>/dev/null
                return 124
            fi
        else
            gone_since=""
        fi
        sleep 0.5
    done
    wait "$pid"
}

for attempt in $(seq 1 "$ATTEMPTS"); do
    run_watched "$@"
    rc=$?
    if [ -n "$STOPPED" ]; then
        echo "mpi-relaunch: SIG$STOPPED: stopping (the command ended with exit code $rc)" >&2
        exit "$rc"
    fi
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
