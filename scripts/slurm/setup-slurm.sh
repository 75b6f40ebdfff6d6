#!/usr/bin/env bash
# Single-node Slurm (slurmctld + slurmd + munge) on Debian 12, without systemd,
# for testing `srun --mpi=pmix --multi-prog`. Run as root.
#   ./setup-slurm.sh start   install (if needed), write /etc/slurm/slurm.conf, start daemons
#   ./setup-slurm.sh stop    stop the daemons started here (by pid file)
#   ./setup-slurm.sh test    srun smoke test: the procpool demo on 4 tasks (coordinator + 3 workers)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CPUS=${CPUS:-8}          # advertised CPUs (> real ones is fine: config_overrides)

start() {
    if ! command -v slurmctld >/dev/null; then
        apt-get install -y --no-install-recommends slurm-wlm   # brings munge, slurmd, slurmctld, slurm-client, mpi_pmix_v4
    fi
    local host; host=$(hostname)
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
    chown munge:munge /run/munge
    cat >/etc/slurm/slurm.conf <<EOF
ClusterName=lab
SlurmctldHost=$host
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
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
NodeName=$host CPUs=$CPUS RealMemory=20000 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
    [ -s /etc/munge/munge.key ] || mungekey --create    # the package's postinst normally made it
    pgrep -x munged >/dev/null || munged --force
    pgrep -x slurmctld >/dev/null || slurmctld
    pgrep -x slurmd >/dev/null || slurmd
    for _ in $(seq 30); do
        sinfo -h -o %T 2>/dev/null | grep -qx idle && break
        sleep 1
    done
    sinfo
}

stop() {
    for f in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
        [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    done
    sleep 1
    echo "stopped"
}

smoke() {
    srun -n 3 --overcommit hostname
    (cd "$HERE/../.." && srun --mpi=pmix -n 4 --overcommit --kill-on-bad-exit=1 --multi-prog "$HERE/procpool.multi.conf")
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    test) smoke ;;
    *) echo "usage: $0 start|stop|test" >&2; exit 2 ;;
esac
