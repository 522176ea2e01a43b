#!/usr/bin/env python3
"""The sessions table of BENCHMARKS.md, in one run: `verify` throughput in the stream form at
32 connections, against the unknown-user login path of the same server (both one account-db
round trip and no argon2; verify adds one Ed25519 check), SQLite store, --hash-params 8,1,1.

    cargo build --release --workspace --bins
    python3 benches/sessions_matrix.py [--duration SECS] > target/sessions.md

Everything runs on loopback; every load is bounded by --duration and stops by itself.
"""

import argparse
import json
import shutil
import subprocess
import tempfile

from stress_matrix import BIN, log, need, start, stop, token_key_flags


def stress(addr, duration, *args):
    out = subprocess.run(
        [f"{BIN}/gateway-sim", "stress", "--target", addr, "--json", "--form", "stream",
         "--connections", "32", "--duration", str(duration), *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=False)
    return json.loads(out.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load")
    args = parser.parse_args()
    for name in ["login-server", "account-db", "gateway-sim"]:
        need(f"{BIN}/{name}")
    data = tempfile.mkdtemp(prefix="sessions-")
    db, db_addr = start([f"{BIN}/account-db", "--listen", "127.0.0.1:0", "--data", data])
    server, addr = start([f"{BIN}/login-server", "--listen", "127.0.0.1:0", "--db", db_addr,
                          "--db-secret-file", f"{data}/account-db.secret",
                          *token_key_flags(BIN, data), "--hash-params", "8,1,1"])
    rows = []
    for label, mix, users in [("unknown-user logins", "unknown=1", "0"),
                              ("verify", "verify=1", "100"),
                              ("unknown-user logins, again", "unknown=1", "0")]:
        log(label)
        result = stress(addr, args.duration, "--mix", mix, "--users", users)
        rows.append((label, result))
    stop(server)
    stop(db)
    shutil.rmtree(data, ignore_errors=True)
    unknown = (rows[0][1]["throughput"] + rows[2][1]["throughput"]) / 2
    print("| load (stream form, 32 connections, hash 8,1,1) | req/s | p99 ms | codes | / unknown-user logins |")
    print("|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['throughput']:.0f} | {r['latency_ms']['p99']:.2f} | "
              f"{r['codes']} | {r['throughput'] / unknown:.0%} |")


if __name__ == "__main__":
    main()
