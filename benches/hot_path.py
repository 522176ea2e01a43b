#!/usr/bin/env python3
"""The cheap path against the two-tier floor (BENCHMARKS.md, "The hot path"), in one run:
login-server and a separate account-db at --hash-params 8,1,1, 32 connections, gateway-sim's
default mix, on SQLite pooled (seed and stream form), with --db-pool 0 (stream form) and on
PostgreSQL (seed and stream form); beside them the two-tier floor (examples/two_tier_floor.rs: an event
loop relaying every message over pipelined connections to a line responder). Context
switches and CPU time per request are counted from /proc: the two server processes', every
PostgreSQL process's (a PostgreSQL there is otherwise idle, or the column is noise), and
gateway-sim's (from this script's rusage of its ended children).

    cargo build --release --workspace --bins --example two_tier_floor
    python3 benches/hot_path.py [--duration SECS] [--repeat N] [--postgres URL] [--before DIR] [--tls] > target/hot-path.md

--before DIR names another build's target/release (an older commit built in a worktree, say):
its login-server and account-db run each load right before this build's, for a before/after
table. --tls adds, for this build, TLS between the tiers against plaintext (the cheap path, and
logins at the default hash parameters). --repeat N runs everything N times, builds alternating, and reports each figure's
median run (by throughput): the machine is shared and noisy. Everything runs on loopback; every load is bounded by --duration and stops by itself.
"""

import argparse
import contextlib
import glob
import os
import resource
import shutil
import subprocess
import tempfile

from stress_matrix import BIN, builds as measured_builds, log, need, start, stop, token_key_flags
from store_matrix import scratch_database, stress

CHEAP = "8,1,1"
CONNECTIONS = "32"


def switches(pids):
    """Voluntary context switches so far (a thread blocking: waiting for work or an answer),
    over every thread of `pids`."""
    total = 0
    for pid in pids:
        for status in glob.glob(f"/proc/{pid}/task/*/status"):
            try:
                with open(status) as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches"):
                            total += int(line.split()[1])
            except FileNotFoundError:
                pass  # a thread that ended meanwhile
    return total


def cpu_seconds(pids):
    """CPU time (user + system) so far of every process in `pids`."""
    ticks = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_seconds():
    """CPU time so far of each PostgreSQL process on this machine (its backends and its own
    helpers), by pid."""
    seconds = {}
    for comm in glob.glob("/proc/[0-9]*/comm"):
        pid = int(comm.split("/")[2])
        try:
            with open(comm) as f:
                if f.read().strip() == "postgres":
                    seconds[pid] = cpu_seconds([pid])
        except OSError:
            pass  # ended meanwhile
    return seconds


def generator_seconds():
    """CPU time of this script's ended children: gateway-sim, once a load has returned."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(addr, pids, duration, *args):
    """One load; its report with `switches_per_request` and CPU microseconds per request of
    the servers (`server_us`) and of the load generator (`generator_us`) added."""
    before = (switches(pids), cpu_seconds(pids), generator_seconds(), postgres_seconds())
    report = stress(addr, duration, "--connections", CONNECTIONS, *args)
    after = (switches(pids), cpu_seconds(pids), generator_seconds(), postgres_seconds())
    requests = max(report["requests"], 1)
    report["switches_per_request"] = (after[0] - before[0]) / requests
    report["server_us"] = (after[1] - before[1]) * 1e6 / requests
    report["generator_us"] = (after[2] - before[2]) * 1e6 / requests
    # Backends that account-db opened during the load count whole; one that ended during it
    # is missed (account-db keeps its pool's connections).
    postgres = sum(cpu - before[3].get(pid, 0) for pid, cpu in after[3].items())
    report["postgres_us"] = postgres * 1e6 / requests
    return report


def floor(duration):
    responder, backend = start([f"{BIN}/examples/two_tier_floor", "respond", "127.0.0.1:0"])
    relay, addr = start([f"{BIN}/examples/two_tier_floor", "relay", "127.0.0.1:0", backend])
    pids = [responder.pid, relay.pid]
    rows = {form: run(addr, pids, duration, "--form", form, "--mix", "login=1", "--users", "0")
            for form in ["seed", "stream"]}
    stop(relay)
    stop(responder)
    return rows


def servers(bin_dir, postgres, duration, loads):
    """Each of `loads` (label, login-server flags, gateway-sim flags) against a fresh pair, on
    SQLite, or on a fresh database of the PostgreSQL server `postgres` (a URL) if given."""
    rows = {}
    for label, server_flags, load_flags in loads:
        with contextlib.ExitStack() as stack:
            store_flags = []
            if postgres:
                store_flags = ["--store", stack.enter_context(scratch_database(postgres, "hot"))]
            rows[label] = pair(bin_dir, store_flags, server_flags, duration, load_flags)
        log(bin_dir, label, round(rows[label]["throughput"]))
    return rows


def pair(bin_dir, store_flags, server_flags, duration, load_flags, tls=False, hashing=CHEAP):
    """One load against a fresh login-server and account-db, with TLS between them if `tls`
    (certificates from this build's `account-db gen-tls`), at --hash-params `hashing` (None:
    the default)."""
    data = tempfile.mkdtemp(prefix="hot-path-")
    db_tls, server_tls = [], []
    if tls:
        subprocess.run([f"{BIN}/account-db", "gen-tls", f"{data}/tls", "--name", "127.0.0.1"],
                       check=True, stdout=subprocess.DEVNULL)
        db_tls = ["--tls-cert", f"{data}/tls/server.pem", "--tls-key", f"{data}/tls/server.key"]
        server_tls = ["--db-tls-ca", f"{data}/tls/ca.pem"]
    hash_flags = ["--hash-params", hashing] if hashing else []
    db, db_addr = start([f"{bin_dir}/account-db", "--listen", "127.0.0.1:0", "--data", data,
                         *store_flags, *db_tls])
    server, addr = start([f"{bin_dir}/login-server", "--listen", "127.0.0.1:0",
                          "--db", db_addr, "--db-secret-file", f"{data}/account-db.secret",
                          *token_key_flags(bin_dir, data), *hash_flags, *server_tls,
                          *server_flags])
    report = run(addr, [db.pid, server.pid], duration, *load_flags)
    stop(server)
    stop(db)
    shutil.rmtree(data, ignore_errors=True)
    return report


def measure(bin_dir, postgres, duration, tls):
    sqlite = servers(bin_dir, None, duration, [
        ("SQLite, seed form", [], ["--form", "seed"]),
        ("SQLite, stream form", [], ["--form", "stream"]),
        ("SQLite, stream form, --db-pool 0", ["--db-pool", "0"], ["--form", "stream"]),
    ])
    postgres = servers(bin_dir, postgres, duration, [
        ("PostgreSQL, seed form", [], ["--form", "seed"]),
        ("PostgreSQL, stream form", [], ["--form", "stream"]),
    ])
    with_tls = {}
    if tls:
        # TLS between the tiers against plaintext, the cheap path and logins at the default
        # hash parameters (every request a login of a known player).
        logins = ["--form", "stream", "--mix", "login=1"]
        for label, hashing, load in [
            ("SQLite, stream form", CHEAP, ["--form", "stream"]),
            ("SQLite, stream form, default hash, logins", None, logins),
        ]:
            for mode in ["plaintext", "TLS"]:
                row = f"{label}, {mode}"
                with_tls[row] = pair(bin_dir, [], [], duration, load, mode == "TLS", hashing)
                log(bin_dir, row, round(with_tls[row]["throughput"]))
    return {**sqlite, **postgres, **with_tls}


def median(reports):
    """The report whose throughput is the median of `reports`."""
    ranked = sorted(reports, key=lambda r: r["throughput"])
    return ranked[len(ranked) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load")
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/test")
    parser.add_argument("--before", help="target/release of another build to compare")
    parser.add_argument("--repeat", type=int, default=1, help="runs of everything; medians")
    parser.add_argument("--tls", action="store_true",
                        help="this build also with TLS between the tiers, against plaintext")
    args = parser.parse_args()
    for name in ["login-server", "account-db", "gateway-sim", "examples/two_tier_floor"]:
        need(f"{BIN}/{name}")
    builds = measured_builds(args.before)
    runs = []
    for _ in range(max(args.repeat, 1)):
        log("two-tier floor")
        run_floors = floor(args.duration)
        run_results = {build: measure(bin_dir, args.postgres, args.duration,
                                      args.tls and build == "after")
                       for build, bin_dir in builds}
        runs.append((run_floors, run_results))
    floors = {form: median([f[form] for f, _ in runs]) for form in runs[0][0]}
    results = {build: {label: median([r[build][label] for _, r in runs])
                       for label in runs[0][1][build]}
               for build, _ in builds}
    print("| run (32 connections, hash 8,1,1) | build | req/s | p99 ms | % of two-tier floor | "
          "switches per request | CPU µs per request: servers | PostgreSQL | gateway-sim |")
    print("|---|---|---|---|---|---|---|---|---|")

    def row(label, build, r, share):
        print(f"| {label} | {build} | {r['throughput']:.0f} | {r['latency_ms']['p99']:.2f} | "
              f"{share:.0%} | {r['switches_per_request']:.2f} | {r['server_us']:.0f} | "
              f"{r['postgres_us']:.0f} | {r['generator_us']:.0f} |")

    for form, r in floors.items():
        row(f"two-tier floor, {form} form", "", r, 1)
    for label in results["after"]:
        form = "seed" if "seed" in label else "stream"
        for build, _ in builds:
            r = results[build].get(label)
            if r:
                row(label, build, r, r["throughput"] / floors[form]["throughput"])
    after = results["after"]
    pooled = after["SQLite, stream form"]["throughput"]
    print(f"\n- pooled / --db-pool 0, stream form: "
          f"{pooled / after['SQLite, stream form, --db-pool 0']['throughput']:.1f}x")
    for form in ["seed", "stream"]:
        pg = after[f"PostgreSQL, {form} form"]["throughput"]
        print(f"- PostgreSQL / SQLite, {form} form: "
              f"{pg / after[f'SQLite, {form} form']['throughput']:.0%}")


    for label in ["SQLite, stream form", "SQLite, stream form, default hash, logins"]:
        plain, tls = after.get(f"{label}, plaintext"), after.get(f"{label}, TLS")
        if plain and tls:
            print(f"- TLS / plaintext, {label}: {tls['throughput'] / plain['throughput']:.0%} "
                  f"of the throughput, p99 {tls['latency_ms']['p99'] - plain['latency_ms']['p99']:+.2f} ms")
    for build, _ in builds:
        print(f"- {build}: every run's req/s: " + "; ".join(
            f"{label}: " + " / ".join(f"{r[build][label]['throughput']:.0f}" for _, r in runs)
            for label in runs[0][1][build]))


if __name__ == "__main__":
    main()
