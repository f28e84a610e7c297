#!/usr/bin/env bash
# NAT lab for NAT traversal tests: network namespaces, veth, one bridge, nftables.
#
#   nat-lab.sh up      build the lab (idempotent: existing pieces are kept, missing ones added)
#   nat-lab.sh down    kill every process in the lab namespaces and delete them (idempotent)
#   nat-lab.sh status  list namespaces, addresses and the miniupnpd process
#
# Needs root and: iproute2, nftables, miniupnpd-nftables (only for bhl-ru).
#
# Topology (every namespace is prefixed with $P, default "bhl-"):
#
#   "Internet": bhl-wan holds bridge "br0", no address, no forwarding.
#   Public net 7.0.0.0/8, all on-link; each public address sits in its own /16.
#   No namespace has a default route to anywhere outside the lab (there is no
#   link to the host's namespace at all).
#
#   bhl-pub   eth0 7.1.0.1/8                 bootstrap / relay host
#   bhl-pub2  eth0 7.2.0.1/8                 second public host (mapping checks)
#   bhl-r1    wan 7.11.0.1/8  lan 10.1.0.1/24   EIM NAT (masquerade)       -> bhl-h1 10.1.0.2
#   bhl-r2    wan 7.12.0.1/8  lan 10.2.0.1/24   EIM NAT (masquerade)       -> bhl-h2 10.2.0.2
#   bhl-rs    wan 7.13.0.1/8  lan 10.3.0.1/24   symmetric (fully-random)   -> bhl-hs 10.3.0.2
#   bhl-ru    wan 7.14.0.1/8  lan 10.4.0.1/24   EIM NAT + miniupnpd (IGD)  -> bhl-hu 10.4.0.2
#
# Routers: forwarding on; forward policy drop; LAN->WAN allowed; WAN->LAN only
# established/related (plus the miniupnpd chain on bhl-ru); everything arriving on
# wan for the router itself is dropped and the router never sends anything out of
# wan itself (no RST / ICMP answers, so no stray conntrack entries that would spoil
# the endpoint-independent mapping needed for hole punching).
set -euo pipefail

P="${BHL_PREFIX:-bhl-}"
RUN="/run/${P}natlab"                     # miniupnpd conf, pid file and log
PUB_LEN=8                                 # public net 7.0.0.0/8, all on-link

WAN="${P}wan"
PUBS=(pub pub2)                           # public hosts
declare -A PUB_IP=([pub]=7.1.0.1 [pub2]=7.2.0.1)
ROUTERS=(r1 r2 rs ru)
declare -A R_WAN=([r1]=7.11.0.1 [r2]=7.12.0.1 [rs]=7.13.0.1 [ru]=7.14.0.1)
declare -A R_LAN=([r1]=10.1.0 [r2]=10.2.0 [rs]=10.3.0 [ru]=10.4.0)
declare -A R_HOST=([r1]=h1 [r2]=h2 [rs]=hs [ru]=hu)
declare -A R_NAT=([r1]=masquerade [r2]=masquerade [rs]="masquerade fully-random" [ru]=masquerade)

all_ns() {
    echo "$WAN"
    for p in "${PUBS[@]}"; do echo "$P$p"; done
    for r in "${ROUTERS[@]}"; do echo "$P$r" "$P${R_HOST[$r]}"; done
}

# --- helpers -----------------------------------------------------------------

ensure_ns() { # name
    [ -e "/run/netns/$1" ] || ip netns add "$1"
    # IPv4-only lab: no link-local IPv6 chatter, no IPv6 path around the NATs.
    ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    ip -n "$1" link set lo up
}

ensure_veth() { # ns1 if1 ns2 if2  (created directly inside the namespaces)
    if ! ip -n "$1" link show "$2" >/dev/null 2>&1; then
        ip -n "$3" link del "$4" 2>/dev/null || true     # half of an older pair
        ip link add name "$2" netns "$1" type veth peer name "$4" netns "$3"
    fi
}

wan_port() { # name-in-bhl-wan ns iface : veth from bridge "br0" to ns/iface
    ensure_veth "$WAN" "$1" "$2" "$3"
    ip -n "$WAN" link set "$1" master br0 up
    ip -n "$2" link set "$3" up
}

router_nft() { # r
    local r=$1 lan=${R_LAN[$1]} fwd_upnp="" post_upnp="" upnp_chains=""
    if [ "$r" = ru ]; then
        fwd_upnp="jump miniupnpd"
        post_upnp="jump postrouting_miniupnpd"
        # miniupnpd 2.3 no longer creates its chains: they must exist beforehand
        # (upnp_table_name / upnp_nat_table_name / upnp_*_chain in its config).
        upnp_chains="
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        jump prerouting_miniupnpd
    }
    chain miniupnpd { }
    chain prerouting_miniupnpd { }
    chain postrouting_miniupnpd { }"
    fi
    # One table per router; only loaded when absent, so a second "up" never
    # wipes mappings miniupnpd has already installed.
    ip netns exec "$P$r" nft list table inet bhl >/dev/null 2>&1 && return 0
    ip netns exec "$P$r" nft -f - <<EOF
table inet bhl {
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "wan" drop
    }
    chain output {
        type filter hook output priority filter; policy accept;
        oifname "wan" drop
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan" oifname "wan" accept
        $fwd_upnp
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        $post_upnp
        oifname "wan" ip saddr $lan.0/24 ${R_NAT[$r]}
    }$upnp_chains
}
EOF
}

miniupnpd_pid() { # prints the pid if our miniupnpd runs
    local pid
    pid=$(cat "$RUN/${P}ru-miniupnpd.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = miniupnpd ] && echo "$pid"
}

start_miniupnpd() {
    local ns="${P}ru" conf="$RUN/${P}ru-miniupnpd.conf" pidf="$RUN/${P}ru-miniupnpd.pid"
    miniupnpd_pid >/dev/null && return 0
    command -v miniupnpd >/dev/null || { echo "miniupnpd not installed (apt-get install miniupnpd-nftables)" >&2; return 1; }
    mkdir -p "$RUN"
    cat >"$conf" <<EOF
ext_ifname=wan
listening_ip=lan
http_port=5000
enable_upnp=yes
enable_natpmp=no
ipv6_disable=yes
secure_mode=yes
notify_interval=30
uuid=6c1d1b0e-6a3a-4a2e-9f00-0000000b4101
friendly_name=${P}ru
upnp_table_name=bhl
upnp_nat_table_name=bhl
upnp_forward_chain=miniupnpd
upnp_nat_chain=prerouting_miniupnpd
upnp_nat_postrouting_chain=postrouting_miniupnpd
allow 1024-65535 ${R_LAN[ru]}.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
EOF
    # -d: stay in the foreground (logs to stderr -> our log file; no syslog needed).
    # setsid + redirections detach it from the caller's terminal/pipes.
    ip netns exec "$ns" setsid miniupnpd -d -f "$conf" -P "$pidf" \
        </dev/null >>"$RUN/${P}ru-miniupnpd.log" 2>&1 &
    local bgpid=$!   # = miniupnpd's pid (ip netns exec and setsid exec, no fork)
    for _ in $(seq 50); do   # wait until SSDP (udp/1900) and HTTP (tcp/5000) listen
        if ip netns exec "$ns" ss -Hlun 'sport = :1900' | grep -q . &&
           ip netns exec "$ns" ss -Hltn 'sport = :5000' | grep -q .; then
            return 0
        fi
        kill -0 "$bgpid" 2>/dev/null || break
        sleep 0.1
    done
    echo "miniupnpd failed to start, see $RUN/${P}ru-miniupnpd.log" >&2
    tail -n 20 "$RUN/${P}ru-miniupnpd.log" >&2 || true
    return 1
}

# --- up / down ---------------------------------------------------------------

up() {
    local ns
    for ns in $(all_ns); do ensure_ns "$ns"; done

    # public segment
    ip -n "$WAN" link show br0 >/dev/null 2>&1 || ip -n "$WAN" link add name br0 type bridge
    ip netns exec "$WAN" sysctl -qw net.bridge.bridge-nf-call-iptables=0 \
        net.bridge.bridge-nf-call-ip6tables=0 net.bridge.bridge-nf-call-arptables=0
    ip -n "$WAN" link set br0 up

    local p r h lan
    for p in "${PUBS[@]}"; do
        wan_port "$p" "$P$p" eth0
        ip -n "$P$p" addr replace "${PUB_IP[$p]}/$PUB_LEN" dev eth0
    done

    for r in "${ROUTERS[@]}"; do
        h=${R_HOST[$r]} lan=${R_LAN[$r]}
        wan_port "$r" "$P$r" wan
        ip -n "$P$r" addr replace "${R_WAN[$r]}/$PUB_LEN" dev wan
        ensure_veth "$P$r" lan "$P$h" eth0
        ip -n "$P$r" addr replace "$lan.1/24" dev lan
        ip -n "$P$r" link set lan up
        ip -n "$P$h" addr replace "$lan.2/24" dev eth0
        ip -n "$P$h" link set eth0 up
        ip -n "$P$h" route replace default via "$lan.1" dev eth0
        ip netns exec "$P$r" sysctl -qw net.ipv4.ip_forward=1
        router_nft "$r"
    done

    start_miniupnpd
}

down() {
    local ns pids
    for ns in $(all_ns); do
        [ -e "/run/netns/$ns" ] || continue
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        # shellcheck disable=SC2086
        [ -z "$pids" ] || kill $pids 2>/dev/null || true
    done
    # give them (miniupnpd removes its rules on SIGTERM) a moment, then insist
    for _ in $(seq 30); do
        pids=""
        for ns in $(all_ns); do
            [ -e "/run/netns/$ns" ] && pids+=" $(ip netns pids "$ns" 2>/dev/null || true)"
        done
        [ -z "${pids// /}" ] && break
        sleep 0.1
    done
    # shellcheck disable=SC2086
    [ -z "${pids// /}" ] || kill -9 $pids 2>/dev/null || true
    for ns in $(all_ns); do
        [ -e "/run/netns/$ns" ] && ip netns del "$ns"
    done
    rm -rf "$RUN"
}

status() {
    local ns
    for ns in $(all_ns); do
        if [ -e "/run/netns/$ns" ]; then
            printf '%-10s %s\n' "$ns" "$(ip -n "$ns" -4 -br addr show | awk '$1!="lo"{print $1, $3}' | tr '\n' ' ')"
        else
            printf '%-10s (absent)\n' "$ns"
        fi
    done
    if pid=$(miniupnpd_pid); then echo "miniupnpd pid $pid"; else echo "miniupnpd not running"; fi
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
