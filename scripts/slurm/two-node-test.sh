#!/usr/bin/env bash
# A two-node Slurm cluster on one machine, and procpool's sbatch script on it.
#
# Two hosts from scripts/mpi-netns.sh (network namespaces on a veth pair,
# unique to this run): slurmctld and slurmd "nodea" in host A, slurmd
# "nodeb" in host B (munge is shared through its socket). Then
# scripts/slurm/procpool.sbatch runs a job over 2 tasks per node; a worker
# rank on node B is SIGKILLed mid-run; the job must tear down within
# seconds, relaunch itself with --resume, and finish with an output
# byte-identical to the local backend's. Then a one-node job, whose ranks
# use no MPI (local channels), with a worker rank SIGKILLed mid-run, must
# relaunch itself and give the local backend's output too.
#
#   scripts/slurm/two-node-test.sh [BIN]   BIN: directory of coordinator and worker
#                                          built with --features mpi (default target/release)
# Needs root, iproute2, Open MPI, and Debian's slurm-wlm (installed if missing).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BIN=$(cd "${1:-$ROOT/target/release}" && pwd)
for b in coordinator worker; do
    [ -x "$BIN/$b" ] || { echo "two-node-test: $BIN/$b missing (build with --features procpool-coordinator/mpi,procpool-worker-bin/mpi)" >&2; exit 2; }
done
command -v slurmctld >/dev/null || apt-get install -y -qq --no-install-recommends slurm-wlm >/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

hosts=$(bash "$ROOT/scripts/mpi-netns.sh" up)
ID=$(echo "$hosts" | head -1)
eval "$(echo "$hosts" | tail -1)" # A=... B=...
NS_A="pp${ID}a" NS_B="pp${ID}b" NET="${A%.1}.0/24"
# Not under /tmp: each node gets a /tmp of its own (below).
DIR=$(mktemp -d /var/tmp/procpool-slurm2.XXXXXX)
STARTED_MUNGE=""
cleanup() {
    for f in "$DIR"/*.pid; do [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
    bash "$ROOT/scripts/mpi-netns.sh" down "$ID"
    if [ -n "${STARTED_MUNGE:-}" ] && [ -s /run/munge/munged.pid ]; then
        kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
    fi
    [ -n "${KEEP:-}" ] || rm -rf "$DIR"
}
trap cleanup EXIT

mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
[ -s /etc/munge/munge.key ] || mungekey --create
if ! pgrep -x munged >/dev/null; then
    munged --force
    STARTED_MUNGE=1
fi

export SLURM_CONF="$DIR/slurm.conf"
cat >"$SLURM_CONF" <<EOF
ClusterName=pp$ID
SlurmctldHost=nodea($A)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool-%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=pmix
ReturnToService=2
SlurmdParameters=config_overrides
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName=nodea NodeAddr=$A CPUs=4 RealMemory=2000 State=UNKNOWN
NodeName=nodeb NodeAddr=$B CPUs=4 RealMemory=2000 State=UNKNOWN
PartitionName=two Nodes=nodea,nodeb Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
mkdir -p "$DIR/ctld" "$DIR/spool-nodea" "$DIR/spool-nodeb"
# nsenter, not `ip netns exec`: that one mounts a sysfs of its own, which
# hides the cgroup file systems slurmd needs.
in_a() { nsenter --net="/run/netns/$NS_A" "$@"; }
in_a unshare --uts sh -c 'hostname nodea; exec slurmctld -f "$0"' "$SLURM_CONF"
# Each node with its own host name (UTS namespace), as the ranks log it, and
# its own /tmp (Slurm's PMIx plugin and Open MPI keep per-node files there).
start_slurmd() { # namespace, node name
    nsenter --net="/run/netns/$1" unshare --uts --mount --propagation private sh -c \
        'mount -t tmpfs tmpfs /tmp && hostname "$1" && exec slurmd -f "$0" -N "$1"' "$SLURM_CONF" "$2"
}
start_slurmd "$NS_A" nodea
start_slurmd "$NS_B" nodeb
for _ in $(seq 60); do
    [ "$(in_a sinfo -h -N -o %T 2>/dev/null | grep -c idle)" = 2 ] && break
    sleep 1
done
in_a sinfo -N || true
[ "$(in_a sinfo -h -N -o %T | grep -c idle)" = 2 ] || { echo "two-node-test: nodes not idle; logs in $DIR" >&2; KEEP=1; exit 1; }

python3 -c "
import json
for i in range(3000): print(json.dumps({'n': i, 'fault': 'sleep:10'}))" >"$DIR/in.jsonl"
"$BIN/coordinator" --task fault --input "$DIR/in.jsonl" --workers 3 >"$DIR/want.jsonl" 2>/dev/null

# MPI between the nodes: TCP over the veth pair only.
export OMPI_MCA_btl=tcp,self OMPI_MCA_btl_tcp_if_include="$NET" OMPI_MCA_oob_tcp_if_include="$NET"
export PROCPOOL_BIN="$BIN"
cd "$DIR"
in_a sbatch --wait -N 2 --ntasks=4 --ntasks-per-node=2 --overcommit --output="$DIR/job.log" \
    "$HERE/procpool.sbatch" fault "$DIR/in.jsonl" "$DIR/out.jsonl" >"$DIR/sbatch.out" 2>&1 &
job=$!
# A worker rank on node B, once records flow.
victim=""
for _ in $(seq 600); do
    if [ -s "$DIR/out.jsonl" ] && [ "$(wc -l <"$DIR/out.jsonl")" -ge 300 ]; then
        victim=$(ip netns pids "$NS_B" | while read -r p; do
            [ "$(cat /proc/"$p"/comm 2>/dev/null)" = worker ] && echo "$p"; done | head -1 || true)
        [ -n "$victim" ] && break
    fi
    sleep 0.1
done
[ -n "$victim" ] || { echo "two-node-test: no worker rank on node B" >&2; cat "$DIR/job.log" >&2; KEEP=1; exit 1; }
done_before=$(wc -l <"$DIR/out.jsonl")
kill -9 "$victim"
killed=$EPOCHREALTIME
teardown=""
for _ in $(seq 600); do
    names=$(ip netns pids "$NS_A" | while read -r p; do cat /proc/"$p"/comm 2>/dev/null || true; done)
    if ! grep -qx coordinator <<<"$names"; then
        teardown=$(awk -v s="$killed" -v e="$EPOCHREALTIME" 'BEGIN { printf "%.1f", e - s }')
        break
    fi
    sleep 0.05
done
rc=0
wait "$job" || rc=$?
grep -v "working record" "$DIR/job.log" | grep -E "error|relaunch|resumed|done:" || true
# Then a job on one node: its ranks use no MPI (local channels). A worker
# rank is SIGKILLed mid-run there too; the job must relaunch itself and end
# with the local backend's output (some records fail in place: exit code 1).
python3 -c "
import json
for i in range(3000): print(json.dumps({'n': i, 'fault': 'error' if i % 997 == 5 else 'sleep:5'}))" >"$DIR/one.jsonl"
"$BIN/coordinator" --task fault --input "$DIR/one.jsonl" --workers 2 >"$DIR/one-want.jsonl" 2>/dev/null || true
one_rc=0
in_a sbatch --wait -N 1 --ntasks=3 --overcommit --output="$DIR/one.log" \
    "$HERE/procpool.sbatch" fault "$DIR/one.jsonl" "$DIR/one-out.jsonl" >>"$DIR/sbatch.out" 2>&1 &
one_job=$!
one_victim=""
for _ in $(seq 600); do
    if [ -s "$DIR/one-out.jsonl" ] && [ "$(wc -l <"$DIR/one-out.jsonl")" -ge 300 ]; then
        one_victim=$(for ns in "$NS_A" "$NS_B"; do ip netns pids "$ns"; done | while read -r p; do
            [ "$(cat /proc/"$p"/comm 2>/dev/null)" = worker ] && echo "$p"; done | head -1 || true)
        [ -n "$one_victim" ] && break
    fi
    sleep 0.1
done
[ -n "$one_victim" ] && kill -9 "$one_victim"
wait "$one_job" || one_rc=$?
one_node=no
if [ -n "$one_victim" ] && [ "$one_rc" = 1 ] && cmp -s "$DIR/one-out.jsonl" "$DIR/one-want.jsonl" \
    && grep -q "every rank of this MPI job runs on this machine: 2 worker ranks" "$DIR/one.log" \
    && grep -q "relaunching" "$DIR/one.log"; then
    one_node=yes
fi
if [ "$rc" = 0 ] && cmp -s "$DIR/out.jsonl" "$DIR/want.jsonl" && grep -q "relaunching" "$DIR/job.log" \
    && [ "$one_node" = yes ]; then
    nodes=$(grep -o 'on node[ab] ready' "$DIR/job.log" | sort -u | tr '\n' ' ')
    echo "two-node-test: PASS: ranks ${nodes}; worker pid $victim on nodeb killed after $done_before records; first step gone ${teardown:-?} s later; relaunched with --resume; output byte-identical to the local backend's ($(wc -l <"$DIR/out.jsonl") records); a one-node job over local channels, a worker rank pid $one_victim killed, relaunched, identical too ($(wc -l <"$DIR/one-out.jsonl") records)"
else
    [ "$one_node" = yes ] || { echo "two-node-test: the one-node job (exit $one_rc):" >&2; tail -20 "$DIR/one.log" >&2 || true; }
    echo "two-node-test: FAIL (sbatch exit $rc); logs in $DIR" >&2
    KEEP=1
    exit 1
fi
