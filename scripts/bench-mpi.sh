#!/usr/bin/env bash
# The MPI backend against the local backend on one machine: the tiny-records
# file-to-file job (`age`) at two sizes, and `primes` scaling, over Open MPI's
# shared memory and over TCP, with worker ranks started beside the
# coordinator (MPMD) or spawned by it (`--workers N`). Every job is timed
# whole (launch to exit), the jobs alternating run after run; the table gives
# medians and each row's ratio to its local row.
#
#   scripts/bench-mpi.sh [--runs N] [--workers N] [--records N] [--big N] [--no-primes]
#
# Defaults: 5 runs, a worker per core, 1M and 4M records. Besides the jobs:
#   - the fixed cost of an MPI job: the same command on an empty input
#     (mpirun, MPI_Init in every rank, the handshake, MPI_Finalize), and
#     `mpirun ... true` (the launcher alone), beside the local backend's;
#     and, when `mpicc` is there, Open MPI's floor: a C program of as many
#     ranks that calls MPI_Init and MPI_Finalize only (with Nagle off on its
#     sockets after MPI_Init, as procpool's ranks do), same launch;
#   - the steady state: the time the big input takes beyond the small one
#     (both whole jobs, so launch and teardown cancel out), MPI against local.
# The one-machine launch as it runs by default: its ranks start no MPI and
# talk over local channels and shared memory (the "local channels" rows).
# The MPI rows make them use MPI itself (PROCPOOL_MPI_TRANSPORT=mpi), with
# the single-node launch the README documents (`--mca pml ob1 --mca btl
# self,vader --bind-to none`; over TCP, eager limits that let a batch go
# whole); one row shows Open MPI's defaults.
#
# Needs Open MPI and libclang (see the README's MPI section); builds the MPI
# feature into target/release. On a busy machine the figures are noise: the
# load is printed before and after; measure on a quiet one.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=5 W=$(nproc) SMALL=1000000 BIG=4000000 PRIMES=1
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --workers) W=$2; shift 2 ;;
        --records) SMALL=$2; shift 2 ;;
        --big) BIG=$2; shift 2 ;;
        --no-primes) PRIMES=0; shift ;;
        *) echo "usage: $0 [--runs N] [--workers N] [--records N] [--big N] [--no-primes]" >&2; exit 2 ;;
    esac
done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 RUST_LOG=warn
cargo build --release -q -p procpool-coordinator -p procpool-worker-bin \
    --features procpool-coordinator/mpi,procpool-worker-bin/mpi
B=target/release
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
python3 scripts/gen_data.py "$SMALL" "$TMP/small.jsonl"
python3 scripts/gen_data.py "$BIG" "$TMP/big.jsonl"
: > "$TMP/empty.jsonl"
python3 -c "
for i in range(2400): print('{\"n\": 1000000}')" > "$TMP/primes.jsonl"
FLOOR=""
if command -v mpicc >/dev/null 2>&1; then
    cat >"$TMP/floor.c" <<'C'
#include <mpi.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    for (int fd = 0; fd < 1024; fd++) { /* as procpool's tcp_no_delay */
        int type, one = 1;
        socklen_t len = sizeof type;
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM)
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    MPI_Finalize();
    return 0;
}
C
    mpicc -O2 -o "$TMP/floor" "$TMP/floor.c" && FLOOR="$TMP/floor"
fi

# The documented single-node launch: the ob1 messaging layer (Open MPI's
# default probes for InfiniBand/OmniPath libraries first, about 0.2 s of
# MPI_Init per rank here), shared memory, unbound ranks (with at most two
# ranks Open MPI binds each to a core, pinning the coordinator's threads to
# one), more ranks than cores allowed.
ONE_NODE=(--oversubscribe --bind-to none --mca pml ob1 --mca btl self,vader)
# TCP as the README documents it: batches sent whole, without a rendezvous.
TCP_EAGER=(--mca btl_tcp_eager_limit 262144 --mca btl_tcp_rndv_eager_limit 262144
    --mca btl_tcp_max_send_size 262144)
TCP=(--oversubscribe --bind-to none --mca pml ob1 --mca btl self,tcp --mca btl_tcp_if_include lo
    "${TCP_EAGER[@]}")
DEFAULTS=(--oversubscribe --bind-to none)
mpmd() { # ranks, mpirun options (one word, an array's name), coordinator args...
    local ranks=$1 opts="$2[@]"; shift 2
    PROCPOOL_MPI_TRANSPORT=mpi mpirun "${!opts}" -n 1 $B/coordinator --backend mpi "$@" : -n "$ranks" $B/worker
}
node() { # ranks, coordinator args... (the same launch; its ranks use no MPI on one machine)
    local ranks=$1; shift
    PROCPOOL_MPI_TRANSPORT=auto mpirun "${ONE_NODE[@]}" -n 1 $B/coordinator --backend mpi "$@" : -n "$ranks" $B/worker
}
# The same, with hwloc's discovery of I/O devices off in mpirun (reading PCI
# configuration space through sysfs is slow in a VM; nothing on one machine
# needs it): the launch the README documents for one machine.
node_fast() {
    HWLOC_COMPONENTS=-pci,-linuxio,-opencl,-gl,-xml_libxml node "$@"
}
spawned() { # ranks, coordinator args... (an MPI singleton spawning its workers)
    local ranks=$1; shift
    OMPI_MCA_pml=ob1 OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_odls_base_sigkill_timeout=0 \
        OMPI_MCA_btl_tcp_eager_limit=262144 OMPI_MCA_btl_tcp_rndv_eager_limit=262144 \
        OMPI_MCA_btl_tcp_max_send_size=262144 \
        $B/coordinator --backend mpi --workers "$ranks" "$@"
}
local_() { $B/coordinator "$@"; }

# The jobs: "key|label|command..." (the key names the row in the table).
AGE="--task age --year 2024 --output $TMP/out.jsonl"
P="--task primes --input $TMP/primes.jsonl --output $TMP/p.jsonl"
JOBS=(
    "l0|local, empty input (spawn and stop $W workers)|local_ --workers $W $AGE --input $TMP/empty.jsonl"
    "m0|MPI shared memory, empty input (mpirun, MPI_Init, handshake, MPI_Finalize)|mpmd $W ONE_NODE $AGE --input $TMP/empty.jsonl"
    "n0|mpirun, ranks on local channels, empty input|node $W $AGE --input $TMP/empty.jsonl"
    "true|mpirun alone: \`mpirun -n $((W + 1)) true\`|mpirun ${ONE_NODE[*]} -n $((W + 1)) true"
    "truef|the same, hwloc's I/O discovery off|env HWLOC_COMPONENTS=-pci,-linuxio,-opencl,-gl,-xml_libxml mpirun ${ONE_NODE[*]} -n $((W + 1)) true"
    ${FLOOR:+"floor|Open MPI's floor: $((W + 1)) ranks of a C program that only calls MPI_Init and MPI_Finalize|mpirun ${ONE_NODE[*]} -n $((W + 1)) $FLOOR"}
    "ls|local, $W workers|local_ --workers $W $AGE --input $TMP/small.jsonl"
    "ns|mpirun, $W worker ranks on local channels (the default on one machine: no MPI)|node $W $AGE --input $TMP/small.jsonl"
    "nf|the same, hwloc's I/O discovery off in mpirun (HWLOC_COMPONENTS=-pci,-linuxio,...)|node_fast $W $AGE --input $TMP/small.jsonl"
    "ms|MPI shared memory, $W worker ranks|mpmd $W ONE_NODE $AGE --input $TMP/small.jsonl"
    "md|MPI shared memory, Open MPI's defaults (no \`--mca pml ob1\`)|mpmd $W DEFAULTS $AGE --input $TMP/small.jsonl"
    "mt|MPI TCP (loopback), $W worker ranks|mpmd $W TCP $AGE --input $TMP/small.jsonl"
    "mp|MPI, $W ranks spawned by a lone coordinator (TCP between jobs)|spawned $W $AGE --input $TMP/small.jsonl"
    "lb|local, $W workers|local_ --workers $W $AGE --input $TMP/big.jsonl"
    "nb|mpirun, $W worker ranks on local channels|node $W $AGE --input $TMP/big.jsonl"
    "mb|MPI shared memory, $W worker ranks|mpmd $W ONE_NODE $AGE --input $TMP/big.jsonl"
)
if [ "$PRIMES" = 1 ]; then
    for w in 1 2; do
        n=s; [ "$w" = 1 ] && n=
        JOBS+=("pl$w|local, $w worker$n|local_ --workers $w $P"
            "pn$w|mpirun, $w worker rank$n on local channels|node $w $P"
            "ps$w|MPI shared memory, $w worker rank$n|mpmd $w ONE_NODE $P"
            "pt$w|MPI TCP, $w worker rank$n|mpmd $w TCP $P")
    done
fi

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for run in $(seq "$RUNS"); do
    for job in "${JOBS[@]}"; do
        IFS='|' read -r key _ cmd <<<"$job"
        s=$EPOCHREALTIME
        # shellcheck disable=SC2086 # the command is words on purpose
        $cmd >/dev/null 2>"$TMP/err" || { echo "failed: $cmd" >&2; tail -5 "$TMP/err" >&2; exit 1; }
        awk -v s="$s" -v e="$EPOCHREALTIME" 'BEGIN { printf "%.4f\n", e - s }' >>"$TMP/t.$key"
    done
    echo "run $run of $RUNS done" >&2
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

med() { sort -n "$TMP/t.$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
row() { # key, label, base key
    local t; t=$(med "$1")
    printf '| %s | %.3f s | %s |\n' "$2" "$t" "$(ratio "$t" "$(med "$3")")"
}
label() { for job in "${JOBS[@]}"; do IFS='|' read -r key l _ <<<"$job"; [ "$key" = "$1" ] && echo "$l"; done; }

echo
echo "$(nproc) cores, load average before $LOAD_BEFORE, after $LOAD_AFTER; medians of $RUNS alternating runs, each job timed whole"
echo
echo "| job | wall (median of $RUNS) | vs local |"
echo "|---|---|---|"
for k in ls ns nf ms md mt mp; do row "$k" "$SMALL \`age\` records, $(label $k)" ls; done
for k in lb nb mb; do row "$k" "$BIG \`age\` records, $(label $k)" lb; done
l=$(awk -v a="$(med lb)" -v b="$(med ls)" 'BEGIN { print a - b }')
m=$(awk -v a="$(med mb)" -v b="$(med ms)" 'BEGIN { print a - b }')
n=$(awk -v a="$(med nb)" -v b="$(med ns)" 'BEGIN { print a - b }')
printf '| steady state: the %s records beyond the first %s (%s-record job minus %s-record job), local | %.3f s | 1.00 |\n' \
    "$((BIG - SMALL))" "$SMALL" "$BIG" "$SMALL" "$l"
printf '| the same, mpirun with ranks on local channels | %.3f s | %s |\n' "$n" "$(ratio "$n" "$l")"
printf '| the same, MPI shared memory | %.3f s | %s |\n' "$m" "$(ratio "$m" "$l")"
for k in l0 n0 m0 true truef ${FLOOR:+floor}; do row "$k" "fixed cost: $(label $k)" l0; done
if [ "$PRIMES" = 1 ]; then
    for w in 1 2; do
        for k in pl$w pn$w ps$w pt$w; do row "$k" "\`primes\` 2400 × n = 1,000,000, $(label $k)" pl$w; done
    done
fi
