#!/usr/bin/env bash
# Two MPI "hosts" on one machine, for testing procpool's MPI backend across
# a network: two network namespaces joined by a veth pair, each with its own
# address and host name (UTS namespace), and nothing else (loopback aside).
# mpirun runs in host A; a small plm_rsh_agent stands in for ssh and starts
# Open MPI's daemon in the namespace that owns the requested address.
#
# Every set of hosts has an ID (given, or made up by `up`): its namespaces
# are pp<ID>a and pp<ID>b, its subnet 10.<x>.<y>.0/24 derived from the ID,
# so that several runs on one machine never see or kill each other's.
#
#   scripts/mpi-netns.sh up [ID]              create them; prints ID, then "A=<ip> B=<ip>"
#   scripts/mpi-netns.sh run ID -- MPIRUN-ARGS  mpirun in host A (place ranks with --host <ip>)
#   scripts/mpi-netns.sh cut ID               take the link down (a network partition)
#   scripts/mpi-netns.sh pids ID              processes still running in the two hosts
#   scripts/mpi-netns.sh down ID              kill what runs in them and remove them (idempotent)
#
# Needs root, iproute2, util-linux (unshare) and Open MPI.
set -euo pipefail
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

names() { # ID
    local id=$1
    [[ $id =~ ^[0-9]{1,5}$ ]] || { echo "mpi-netns: ID must be a number below 100000, got '$id'" >&2; exit 2; }
    NS_A="pp${id}a" NS_B="pp${id}b" IF_A="pp${id}a0" IF_B="pp${id}b0"
    local x=$((100 + id % 100)) y=$((id / 100 % 250))
    IP_A="10.$x.$y.1" IP_B="10.$x.$y.2" NET="10.$x.$y.0/24"
    AGENT="${TMPDIR:-/tmp}/procpool-rsh-netns-$id"
}

down() {
    for ns in "$NS_A" "$NS_B"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true # also removes its end of the veth pair
    done
    rm -f "$AGENT"
}

up() {
    ip netns add "$NS_A"
    ip netns add "$NS_B" || { ip netns del "$NS_A"; exit 1; }
    ip link add "$IF_A" netns "$NS_A" type veth peer name "$IF_B" netns "$NS_B"
    ip -n "$NS_A" addr add "$IP_A/24" dev "$IF_A"
    ip -n "$NS_B" addr add "$IP_B/24" dev "$IF_B"
    for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
    ip -n "$NS_A" link set "$IF_A" up
    ip -n "$NS_B" link set "$IF_B" up
    # Give up on an unanswered TCP peer within seconds, not the kernel's
    # default quarter of an hour: then Open MPI's daemons and mpirun notice a
    # partition and end, as they would on a cluster that fences a lost node.
    for ns in "$NS_A" "$NS_B"; do
        ip netns exec "$ns" sysctl -q -w net.ipv4.tcp_retries2=4 net.ipv4.tcp_syn_retries=2
    done
    # Reachability without ping: a closed port on the peer refuses at once.
    local probe
    probe=$(ip netns exec "$NS_A" timeout 2 bash -c "exec 3<>/dev/tcp/$IP_B/9" 2>&1 || true)
    case "$probe" in *refused*) ;; *) echo "mpi-netns: veth not working: $probe" >&2; down; exit 1 ;; esac
    # The agent: Open MPI calls it like ssh (AGENT [options] HOST COMMAND...).
    cat >"$AGENT" <<AGENT_EOF
#!/bin/sh
while [ "\${1#-}" != "\$1" ]; do shift; done
case "\$1" in $IP_A) ns=$NS_A ;; $IP_B) ns=$NS_B ;; *) echo "rsh-netns: unknown host \$1" >&2; exit 255 ;; esac
shift
exec ip netns exec "\$ns" unshare --uts sh -c "hostname \$ns; \$*"
AGENT_EOF
    chmod 0755 "$AGENT"
}

run() {
    [ -x "$AGENT" ] || { echo "mpi-netns: run '$0 up $ID' first" >&2; exit 1; }
    # TCP only: Open MPI's shared-memory transport fails across namespaces
    # that share /dev/shm. Short TCP keepalives on the daemons' own links let
    # them notice a partition (and end their ranks) within seconds.
    exec ip netns exec "$NS_A" unshare --uts sh -c "hostname $NS_A; exec \"\$0\" \"\$@\"" mpirun \
        --mca plm_rsh_agent "$AGENT" \
        --mca btl tcp,self \
        --mca oob_tcp_if_include "$NET" --mca btl_tcp_if_include "$NET" \
        --mca oob_tcp_keepalive_time 2 --mca oob_tcp_keepalive_intvl 1 --mca oob_tcp_keepalive_probes 3 \
        --oversubscribe \
        "$@"
}

cmd=${1:-}
case "$cmd" in
    up)
        ID=${2:-$(( ($$ * 7919 + RANDOM) % 25000 ))}
        names "$ID"
        if ip netns list | grep -qw "$NS_A"; then
            echo "mpi-netns: $NS_A exists already (another run's); pick another ID" >&2
            exit 1
        fi
        up
        echo "$ID"
        echo "A=$IP_A B=$IP_B"
        ;;
    run)
        ID=${2:?usage: $0 run ID -- MPIRUN-ARGS}; names "$ID"; shift 2
        [ "${1:-}" = -- ] && shift
        run "$@"
        ;;
    cut) names "${2:?usage: $0 cut ID}"; ip -n "$NS_A" link set "$IF_A" down ;;
    pids) names "${2:?usage: $0 pids ID}"; { ip netns pids "$NS_A"; ip netns pids "$NS_B"; } 2>/dev/null || true ;;
    down) names "${2:?usage: $0 down ID}"; down ;;
    *) echo "usage: $0 up [ID] | run ID -- MPIRUN-ARGS | cut ID | pids ID | down ID" >&2; exit 2 ;;
esac
