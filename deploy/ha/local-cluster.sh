#!/usr/bin/env bash
# A PostgreSQL cluster that fails over, on one machine: three nodes under Patroni and one etcd,
# on loopback ports, everything under DIR owned by the postgres OS user (PostgreSQL refuses
# root). The tests' cluster (tests/ha.rs); docs/operations.md, "High availability", has the
# same layout across three hosts.
#
#   deploy/ha/local-cluster.sh start DIR    # prints the --store URL on its last line; starts
#                                           # again whatever stopped (a killed node, say)
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
# Whether process $1 runs: a zombie does not (where nothing reaps orphans, a container's
# init, a killed process stays one).
live() {
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}
running() {
  local pid
  for pid in $(pids); do live "$pid" && return 0; done
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

alive() { # whether the process in pid file $1 runs
  local pid
  pid=$(cat "$dir/$1" 2>/dev/null) || return 1
  live "$pid"
}

start_etcd() {
  as_postgres bash -c "nohup etcd --config-file '$dir/etcd.yml' >>'$dir/etcd.log' 2>&1 &
                       echo \$! > '$dir/etcd.pid'"
}

start_node() {
  as_postgres bash -c "nohup patroni '$dir/node$1.yml' >>'$dir/node$1.log' 2>&1 &
                       echo \$! > '$dir/node$1.pid'"
}

fail() { # stop what runs, and say why
  echo "$1" >&2
  stop_all >/dev/null 2>&1 || true
  exit 1
}

start() {
  need
  mkdir -p "$dir"
  [ -f "$dir/base-port" ] || echo "${HA_PORT:-25000}" > "$dir/base-port"
  ports
  local fresh=1 started=0 i
  if running; then
    fresh=0
  else
    chown postgres: "$dir" 2>/dev/null || true
    chmod 0700 "$dir"
    name=etcd pg_port= rest_port= fill "$here/etcd.yml.in" "$dir/etcd.yml"
    for i in 1 2 3; do
      name=node$i pg_port=$((base + 10 + i)) rest_port=$((base + 20 + i))
      fill "$here/patroni.yml.in" "$dir/node$i.yml"
    done
    chown postgres: "$dir"/*.yml "$dir/base-port" 2>/dev/null || true
  fi
  # Whatever is not running is started: all of it, or the nodes that died (one killed, say).
  if ! alive etcd.pid; then
    start_etcd
    started=1
  fi
  wait_for 30 curl -sf "http://127.0.0.1:$etcd_port/health" ||
    fail "etcd did not start: see $dir/etcd.log"
  for i in 1 2 3; do
    if ! alive "node$i.pid"; then
      start_node "$i"
      started=1
    fi
  done
  if [ "$started" -eq 0 ]; then
    echo "already running in $dir" >&2
    exit 1
  fi
  # All together: after a stop, only the last leader or its synchronous standby may lead.
  wait_for 120 leader_port || {
    [ "$fresh" -eq 1 ] && fail "no leader: see $dir/node*.log"
    echo "no leader: see $dir/node*.log" >&2
    exit 1
  }
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

stop_one() { # stop the process in pid file $1 (its PostgreSQL with it, for a node)
  local f=$dir/$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  kill -CONT "$pid" 2>/dev/null || true
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < 300; i++)); do live "$pid" || break; sleep 0.2; done
  live "$pid" && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$f"
}

stop_all() {
  local i leader=0
  for i in 1 2 3; do
    curl -sf -o /dev/null "http://127.0.0.1:$((base + 20 + i))/primary" && leader=$i
  done
  # The standbys first, the leader last: a leader stopped first hands its role to a standby,
  # and the next start would have to wait for that one.
  for i in 1 2 3; do
    [ "$i" -eq "$leader" ] || stop_one "node$i.pid"
  done
  [ "$leader" -eq 0 ] || stop_one "node$leader.pid"
  stop_one etcd.pid
  # A PostgreSQL whose Patroni was killed is stopped by hand.
  for i in 1 2 3; do
    if [ -f "$dir/node$i/postmaster.pid" ]; then
      as_postgres "$pg_bin/pg_ctl" -D "$dir/node$i" -m fast stop >/dev/null 2>&1 || true
    fi
  done
}

stop() {
  ports
  if ! running; then
    echo "nothing running in $dir" >&2
    exit 1
  fi
  stop_all
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
