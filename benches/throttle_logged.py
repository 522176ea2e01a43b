#!/usr/bin/env python3
"""What keeping PostgreSQL's throttle table logged costs (BENCHMARKS.md, "Throttle records across
a failover"): one login-server and account-db pair on a scratch database, the table flipped
between UNLOGGED and LOGGED (`ALTER TABLE throttle SET ...`) before each load, the two
interleaved, --repeat times each; medians with every run. Two loads: gateway-sim's default
mix (the cheap path: 5% wrong passwords, 5% registrations) and wrong passwords only (every
request a throttle write), both at --hash-params 8,1,1 and 32 stream-form connections.

    cargo build --release --workspace --bins
    python3 benches/throttle_logged.py [--duration SECS] [--repeat N] [--postgres URL]

Everything runs on loopback; every load is bounded by --duration and stops by itself.
"""

import argparse
import contextlib
import shutil
import statistics
import tempfile

from hot_path import CHEAP, CONNECTIONS, run
from stress_matrix import BIN, log, need, start, stop, token_key_flags
from store_matrix import psql, scratch_database

LOADS = [
    ("default mix", ["--form", "stream"]),
    ("wrong passwords only", ["--form", "stream", "--mix", "badpass=1"]),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load")
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/test")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each variant")
    args = parser.parse_args()
    for name in ["login-server", "account-db", "gateway-sim"]:
        need(f"{BIN}/{name}")
    results = {(load, kind): [] for load, _ in LOADS for kind in ["UNLOGGED", "LOGGED"]}
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(scratch_database(args.postgres, "throttle"))
        data = tempfile.mkdtemp(prefix="throttle-logged-")
        stack.callback(shutil.rmtree, data, ignore_errors=True)
        db, db_addr = start([f"{BIN}/account-db", "--listen", "127.0.0.1:0", "--data", data,
                             "--store", url])
        stack.callback(stop, db)
        server, addr = start([f"{BIN}/login-server", "--listen", "127.0.0.1:0", "--db", db_addr,
                              "--db-secret-file", f"{data}/account-db.secret",
                              *token_key_flags(BIN, data), "--hash-params", CHEAP])
        stack.callback(stop, server)
        for _ in range(max(args.repeat, 1)):
            for load, flags in LOADS:
                for kind in ["UNLOGGED", "LOGGED"]:
                    psql(url, f"ALTER TABLE throttle SET {kind}")
                    report = run(addr, [db.pid, server.pid], args.duration, *flags)
                    results[(load, kind)].append(report)
                    log(load, kind, round(report["throughput"]))
    print(f"| load ({CONNECTIONS} connections, hash {CHEAP}) | throttle table | req/s (median) "
          "| every run | p99 ms (median run) | CPU µs per request: servers | PostgreSQL |")
    print("|---|---|---|---|---|---|---|")
    for load, _ in LOADS:
        medians = {}
        for kind in ["UNLOGGED", "LOGGED"]:
            reports = sorted(results[(load, kind)], key=lambda r: r["throughput"])
            mid = reports[len(reports) // 2]
            medians[kind] = statistics.median(r["throughput"] for r in reports)
            runs = " / ".join(str(round(r["throughput"])) for r in results[(load, kind)])
            print(f"| {load} | {kind} | {round(medians[kind])} | {runs} | {mid['latency_ms']['p99']:.2f} "
                  f"| {mid['server_us']:.0f} | {mid['postgres_us']:.0f} |")
        print(f"| {load} | LOGGED / UNLOGGED | {medians['LOGGED'] / medians['UNLOGGED']:.0%} "
              "| | | | |")


if __name__ == "__main__":
    main()
