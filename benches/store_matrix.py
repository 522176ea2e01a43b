#!/usr/bin/env python3
"""The store comparison of BENCHMARKS.md, in one run: the cheap login path and durable
registrations through login-server and a separate account-db on the SQLite store and on the
PostgreSQL store, and pgbench -S as PostgreSQL's own floor for point reads.

    cargo build --release --workspace --bins
    python3 benches/store_matrix.py [--duration SECS] [--postgres URL] [--before DIR] > target/stores.md

--before DIR names another build's target/release (an older commit built in a worktree, say)
whose login-server and account-db are measured too, store by store right before this build's,
for a before/after table (this build's gateway-sim drives both).

--postgres is a server URL whose database is only used to make and drop a database of the
run's own (default postgres://postgres@127.0.0.1:5432/test). Everything runs on loopback;
every load is bounded by --duration and stops by itself.
"""

import argparse
import contextlib
import json
import shutil
import subprocess
import tempfile
import uuid

from stress_matrix import BIN, log, need, start, stop, token_key_flags

CHEAP = "8,1,1"


def psql(admin, sql):
    subprocess.run(["psql", admin, "-q", "-c", sql], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def scratch_database(admin, prefix):
    """A database of the run's own on the server of `admin` (a URL); its URL. Dropped after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    psql(admin, f"CREATE DATABASE {name}")
    try:
        yield admin.rsplit("/", 1)[0] + "/" + name
    finally:
        psql(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def stress(addr, duration, *args):
    out = subprocess.run(
        [f"{BIN}/gateway-sim", "stress", "--target", addr, "--json",
         "--duration", str(duration), *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=False)
    return json.loads(out.stdout)


def measure(store_flags, duration, bin_dir=BIN):
    """Throughput and p99 of each load against login-server + account-db (from `bin_dir`) on
    one store."""
    data = tempfile.mkdtemp(prefix="stores-")
    db, db_addr = start([f"{bin_dir}/account-db", "--listen", "127.0.0.1:0", "--data", data,
                         *store_flags])
    server, addr = start([f"{bin_dir}/login-server", "--listen", "127.0.0.1:0", "--db", db_addr,
                          *token_key_flags(bin_dir, data),
                          "--db-secret-file", f"{data}/account-db.secret",
                          "--hash-params", CHEAP])
    rows = {}
    for form in ["stream", "seed"]:
        rows[f"logins, {form} form"] = stress(addr, duration, "--form", form,
                                              "--connections", "32")
    rows["registrations, stream form"] = stress(addr, duration, "--form", "stream",
                                                "--connections", "32", "--users", "0",
                                                "--mix", "register=100")
    stop(server)
    stop(db)
    shutil.rmtree(data, ignore_errors=True)
    return rows


def pgbench(url, duration):
    subprocess.run(["pgbench", "-i", "-s", "1", "-q", url], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = subprocess.run(["pgbench", "-S", "-c", "8", "-j", "2", "-T", str(int(duration)), url],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True)
    for line in out.stdout.splitlines():
        if line.startswith("tps"):
            return float(line.split()[2])
    return float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load")
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/test")
    parser.add_argument("--before", help="target/release of another build to compare")
    args = parser.parse_args()
    for name in ["login-server", "account-db", "gateway-sim"]:
        need(f"{BIN}/{name}")
    if args.before:
        for name in ["login-server", "account-db"]:
            need(f"{args.before}/{name}")
        compare(args)
        return
    with scratch_database(args.postgres, "stores") as url:
        log("sqlite")
        sqlite = measure([], args.duration)
        log("postgres")
        postgres = measure(["--store", url], args.duration)
        log("pgbench -S")
        floor = pgbench(url, args.duration)
    print("| load (32 connections, hash 8,1,1) | SQLite req/s | p99 ms | PostgreSQL req/s | p99 ms | PostgreSQL / SQLite |")
    print("|---|---|---|---|---|---|")
    for load, s in sqlite.items():
        p = postgres[load]
        print(f"| {load} | {s['throughput']:.0f} | {s['latency_ms']['p99']:.2f} | "
              f"{p['throughput']:.0f} | {p['latency_ms']['p99']:.2f} | "
              f"{p['throughput'] / s['throughput']:.0%} |")
    print(f"\npgbench -S (8 clients, 2 threads, scale 1) on the same PostgreSQL: {floor:.0f} tps")


def compare(args):
    """Each store and load, the build in --before then this one: throughput, p99, ratio."""
    rows = []
    for store in ["SQLite", "PostgreSQL"]:
        for build in ["before", "after"]:
            with scratch_database(args.postgres, "stores") as url:
                flags = [] if store == "SQLite" else ["--store", url]
                bin_dir = args.before if build == "before" else BIN
                log(store, build)
                rows.append((store, build, measure(flags, args.duration, bin_dir)))
    print("| store | load (32 connections, hash 8,1,1) | before req/s | p99 ms | after req/s | p99 ms | after / before |")
    print("|---|---|---|---|---|---|---|")
    for (store, _, before), (_, _, after) in zip(rows[0::2], rows[1::2]):
        for load, b in before.items():
            a = after[load]
            print(f"| {store} | {load} | {b['throughput']:.0f} | {b['latency_ms']['p99']:.2f} | "
                  f"{a['throughput']:.0f} | {a['latency_ms']['p99']:.2f} | "
                  f"{a['throughput'] / b['throughput']:.0%} |")


if __name__ == "__main__":
    main()
