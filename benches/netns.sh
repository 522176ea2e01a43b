#!/usr/bin/env bash
# Each tier on its own host, across a real (emulated) network link instead of loopback: three
# network namespaces joined by veth pairs, 2 ms of delay and 0.5% loss (tc netem) on every
# link, then a bounded stress run. Needs root, iproute2 and tc (Debian: iproute2), and a kernel
# with netem; without it the links carry no added delay or loss, and the script says so.
#
#   cargo build --release --workspace --bins
#   sudo bash benches/netns.sh [SECONDS]
#
#   gw (10.231.1.1) ──veth── ls (10.231.1.2 | 10.231.2.2) ──veth── db (10.231.2.1)
#   gateway-sim           login-server                          account-db (SQLite)
#
# Every address lives only inside these namespaces, which the script makes and removes; the
# load stops by itself after SECONDS (default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
SECONDS_RUN=${1:-5}
for tool in ip tc; do
  command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install iproute2" >&2; exit 1; }
done
for bin in login-server account-db gateway-sim; do
  [ -x "$BIN/$bin" ] || { echo "$BIN/$bin missing: cargo build --release --workspace --bins" >&2; exit 1; }
done
NS=(lsbench-gw lsbench-ls lsbench-db)
DATA=$(mktemp -d)
remove_namespaces() {
  for ns in "${NS[@]}"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
}
trap 'remove_namespaces; rm -rf "$DATA"' EXIT
remove_namespaces
for ns in "${NS[@]}"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
link() { # link NS_A ADDR_A NS_B ADDR_B NAME
  ip link add "$5a" type veth peer name "$5b"
  ip link set "$5a" netns "$1"; ip link set "$5b" netns "$3"
  ip -n "$1" addr add "$2/24" dev "$5a"; ip -n "$3" addr add "$4/24" dev "$5b"
  ip -n "$1" link set "$5a" up; ip -n "$3" link set "$5b" up
  for side in "$1 $5a" "$3 $5b"; do
    set -- $side
    if ! ip netns exec "$1" tc qdisc add dev "$2" root netem delay 2ms loss 0.5% 2>/dev/null; then
      echo "warning: this kernel has no netem (sch_netem): $2 carries no added delay or loss" >&2
    fi
  done
}
link lsbench-gw 10.231.1.1 lsbench-ls 10.231.1.2 lsgw
link lsbench-ls 10.231.2.2 lsbench-db 10.231.2.1 lsdb

ip netns exec lsbench-db "$BIN/account-db" --listen 10.231.2.1:9999 --data "$DATA" \
  2>"$DATA/account-db.log" &
sleep 1
"$BIN/login-server" gen-token-key "$DATA/token.key" >/dev/null
ip netns exec lsbench-ls "$BIN/login-server" --listen 10.231.1.2:6999 --db 10.231.2.1:9999 \
  --db-secret-file "$DATA/account-db.secret" --token-key-file "$DATA/token.key" \
  --hash-params 8,1,1 --allow-from 10.231.1.0/24 \
  2>"$DATA/login-server.log" &
sleep 1
for form in stream seed; do
  echo "## $form form, 32 connections, $SECONDS_RUN s"
  ip netns exec lsbench-gw "$BIN/gateway-sim" stress --target 10.231.1.2:6999 --allow-remote \
    --form "$form" --connections 32 --duration "$SECONDS_RUN" || true
done
