#!/usr/bin/env bash
# Two MPI "hosts" on one machine, for testing procpool's MPI backend across
# a network: network namespaces ppa (10.99.0.1) and ppb (10.99.0.2) joined by
# a veth pair, each with its own host name (UTS namespace). mpirun runs in
# ppa; a small plm_rsh_agent stands in for ssh and starts Open MPI's daemon in
# the namespace that owns the requested address. Traffic stays between the
# two addresses inside the namespaces this script creates.
#
#   scripts/mpi-netns.sh up                 create the namespaces
#   scripts/mpi-netns.sh run -- MPIRUN-ARGS mpirun across both (ranks placed with --host)
#   scripts/mpi-netns.sh down               remove them (idempotent)
#
# Needs root, iproute2, util-linux (unshare) and Open MPI.
set -euo pipefail

NS_A=ppa NS_B=ppb
IP_A=10.99.0.1 IP_B=10.99.0.2 NET=10.99.0.0/24
AGENT="${TMPDIR:-/tmp}/procpool-rsh-netns"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

down() {
    for ns in "$NS_A" "$NS_B"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true # also removes its end of the veth pair
    done
    rm -f "$AGENT"
}

up() {
    down
    ip netns add "$NS_A"
    ip netns add "$NS_B"
    ip link add ppa0 netns "$NS_A" type veth peer name ppb0 netns "$NS_B"
    ip -n "$NS_A" addr add "$IP_A/24" dev ppa0
    ip -n "$NS_B" addr add "$IP_B/24" dev ppb0
    for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
    ip -n "$NS_A" link set ppa0 up
    ip -n "$NS_B" link set ppb0 up
    # Reachability without ping: a closed port on the peer refuses at once.
    local probe
    probe=$(ip netns exec "$NS_A" timeout 2 bash -c "exec 3<>/dev/tcp/$IP_B/9" 2>&1 || true)
    case "$probe" in *refused*) ;; *) echo "mpi-netns: veth not working: $probe" >&2; exit 1 ;; esac
    # The agent: Open MPI calls it like ssh (AGENT [options] HOST COMMAND...).
    cat >"$AGENT" <<'AGENT_EOF'
#!/bin/sh
while [ "${1#-}" != "$1" ]; do shift; done
case "$1" in 10.99.0.1) ns=ppa ;; 10.99.0.2) ns=ppb ;; *) echo "rsh-netns: unknown host $1" >&2; exit 255 ;; esac
shift
exec ip netns exec "$ns" unshare --uts sh -c "hostname $ns; $*"
AGENT_EOF
    chmod 0755 "$AGENT"
    echo "mpi-netns: $NS_A=$IP_A $NS_B=$IP_B"
}

run() {
    [ -x "$AGENT" ] || { echo "mpi-netns: run '$0 up' first" >&2; exit 1; }
    # TCP only: Open MPI's shared-memory transport fails across namespaces
    # that share /dev/shm.
    exec ip netns exec "$NS_A" unshare --uts sh -c 'hostname ppa; exec "$0" "$@"' mpirun \
        --mca plm_rsh_agent "$AGENT" \
        --mca btl tcp,self \
        --mca oob_tcp_if_include "$NET" --mca btl_tcp_if_include "$NET" \
        --oversubscribe \
        "$@"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    run) shift; [ "${1:-}" = -- ] && shift; run "$@" ;;
    *) echo "usage: $0 up | run -- MPIRUN-ARGS | down" >&2; exit 2 ;;
esac
