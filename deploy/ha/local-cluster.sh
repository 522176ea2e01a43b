#!/usr/bin/env bash
# A PostgreSQL cluster that fails over, on one machine: three nodes under Patroni and one etcd,
# on loopback ports, everything under DIR owned by the postgres OS user (PostgreSQL refuses
# root). The tests' cluster (tests/ha.rs); docs/operations.md, "High availability", has the
# same layout across three hosts.
#
#   deploy/ha/local-cluster.sh start DIR    # prints the --store URL on its last line
#   deploy/ha/local-cluster.sh status DIR   # patronictl list; exit 1 if it is not running
#   deploy/ha/local-cluster.sh stop DIR     # exit 1 if nothing was running
#
# Ports: HA_PORT (default 25000) for etcd's clients, HA_PORT+1 its peers, HA_PORT+11..13 the
# PostgreSQL nodes, HA_PORT+21..23 their Patroni REST APIs. Run it as root (it runs the
# servers as postgres with runuser) or as postgres. It installs nothing: it says what is missing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
usage() { echo "usage: $0 start|stop|status DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
command=$1
dir=$(realpath -m "$2")
pg_bin=${PG_BIN:-/usr/lib/postgresql/15/bin}

# As the postgres user: directly when this is it, else through runuser.
as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

need() {
  local missing=()
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v patroni >/dev/null && command -v patronictl >/dev/null || missing+=(patroni)
  [ -x "$pg_bin/postgres" ] || missing+=(postgresql-15)
  command -v psql >/dev/null || missing+=(postgresql-client)
  command -v curl >/dev/null || missing+=(curl)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "missing: ${missing[*]} (install them: apt-get install ${missing[*]})" >&2
    exit 1
  fi
  if [ "$(id -un)" != postgres ] && [ "$(id -u)" -ne 0 ]; then
    echo "run this as root or as the postgres user (PostgreSQL refuses root)" >&2
    exit 1
  fi
  id postgres >/dev/null 2>&1 || { echo "no postgres OS user" >&2; exit 1; }
}

# Every process this cluster runs, by pid file.
pids() { cat "$dir"/*.pid 2>/dev/null || true; }
running() {
  local pid
  for pid in $(pids); do kill -0 "$pid" 2>/dev/null && return 0; done
  return 1
}

fill() { # template output: the @...@ fields
  sed -e "s|@DIR@|$dir|g" -e "s|@NAME@|$name|g" -e "s|@PG_PORT@|$pg_port|g" \
      -e "s|@REST_PORT@|$rest_port|g" -e "s|@ETCD_PORT@|$etcd_port|g" \
      -e "s|@ETCD_PEER_PORT@|$etcd_peer_port|g" -e "s|@PG_BIN@|$pg_bin|g" "$1" > "$2"
}

ports() {
  base=$(cat "$dir/base-port" 2>/dev/null || echo "${HA_PORT:-25000}")
  etcd_port=$base
  etcd_peer_port=$((base + 1))
}

# Wait up to $1 seconds for "$2 ..." to succeed.
wait_for() {
  local limit=$1 i
  shift
  for ((i = 0; i < limit * 5; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 1
}

leader_port() { # the PostgreSQL port of the node whose REST API says it is the leader
  local i
  for i in 1 2 3; do
    if curl -sf -o /dev/null "http://127.0.0.1:$((base + 20 + i))/primary"; then
      echo $((base + 10 + i))
      return 0
    fi
  done
  return 1
}

sync_standby() { # whether a node's REST API says it is the synchronous standby
  local i
  for i in 1 2 3; do
    curl -sf -o /dev/null "http://127.0.0.1:$((base + 20 + i))/sync" && return 0
  done
  return 1
}

start() {
  need
  if [ -d "$dir" ] && running; then
    echo "already running in $dir" >&2
    exit 1
  fi
  mkdir -p "$dir"
  [ -f "$dir/base-port" ] || echo "${HA_PORT:-25000}" > "$dir/base-port"
  ports
  chown postgres: "$dir" 2>/dev/null || true
  chmod 0700 "$dir"
  name=etcd pg_port= rest_port= fill "$here/etcd.yml.in" "$dir/etcd.yml"
  for i in 1 2 3; do
    name=node$i pg_port=$((base + 10 + i)) rest_port=$((base + 20 + i))
    fill "$here/patroni.yml.in" "$dir/node$i.yml"
  done
  chown postgres: "$dir"/*.yml "$dir/base-port" 2>/dev/null || true
  as_postgres bash -c "nohup etcd --config-file '$dir/etcd.yml' >>'$dir/etcd.log' 2>&1 &
                       echo \$! > '$dir/etcd.pid'"
  wait_for 30 curl -sf "http://127.0.0.1:$etcd_port/health" ||
    { echo "etcd did not start: see $dir/etcd.log" >&2; exit 1; }
  for i in 1 2 3; do
    as_postgres bash -c "nohup patroni '$dir/node$i.yml' >>'$dir/node$i.log' 2>&1 &
                         echo \$! > '$dir/node$i.pid'"
    if [ "$i" -eq 1 ]; then
      # The first bootstraps the cluster; the others copy it.
      wait_for 90 leader_port || { echo "no leader: see $dir/node1.log" >&2; exit 1; }
    fi
  done
  for i in 1 2 3; do
    wait_for 120 curl -sf "http://127.0.0.1:$((base + 20 + i))/health" ||
      { echo "node$i is not running: see $dir/node$i.log" >&2; exit 1; }
  done
  wait_for 60 sync_standby || { echo "no synchronous standby: see $dir/node*.log" >&2; exit 1; }
  local leader
  leader=$(leader_port)
  if ! psql -h 127.0.0.1 -p "$leader" -U postgres -d postgres -tAc \
       "SELECT 1 FROM pg_database WHERE datname = 'accounts'" | grep -q 1; then
    psql -h 127.0.0.1 -p "$leader" -U postgres -d postgres -qc "CREATE DATABASE accounts"
  fi
  as_postgres patronictl -c "$dir/node1.yml" list >&2
  echo "postgres://postgres@127.0.0.1:$((base + 11)),127.0.0.1:$((base + 12)),127.0.0.1:$((base + 13))/accounts?target_session_attrs=read-write&sslmode=disable"
}

stop() {
  ports
  if ! running; then
    echo "nothing running in $dir" >&2
    exit 1
  fi
  local pid
  # Patroni first (each stops its PostgreSQL), then etcd.
  for f in "$dir"/node*.pid "$dir/etcd.pid"; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    wait_for 60 bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
    rm -f "$f"
  done
  # A PostgreSQL whose Patroni was killed is stopped by hand.
  for i in 1 2 3; do
    if [ -f "$dir/node$i/postmaster.pid" ]; then
      as_postgres "$pg_bin/pg_ctl" -D "$dir/node$i" -m fast stop >/dev/null 2>&1 || true
    fi
  done
  echo "stopped" >&2
}

status() {
  ports
  if ! running; then
    echo "not running in $dir" >&2
    exit 1
  fi
  as_postgres patronictl -c "$dir/node1.yml" list
}

case $command in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) usage ;;
esac
