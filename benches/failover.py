#!/usr/bin/env python3
"""The failover timeline of BENCHMARKS.md: throughput second by second through one
login-server over two account-dbs on one PostgreSQL database, while one account-db is killed
with SIGKILL part-way through.

    cargo build --release --workspace --bins
    python3 benches/failover.py [--duration SECS] [--kill-at SECS] [--plot FILE.svg]

Prints one row per second (requests, p99, and the codes other than 3 and 4 of the whole run)
and draws the timeline with gateway-sim's --plot. Loopback only; the load is bounded by
--duration and stops by itself.
"""

import argparse
import json
import signal
import subprocess
import tempfile
import threading

from stress_matrix import BIN, log, need, start, stop, token_key_flags
from store_matrix import scratch_database


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--kill-at", type=float, default=4.0, help="seconds into the run")
    parser.add_argument("--plot", default="target/failover.svg")
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    for name in ["login-server", "account-db", "gateway-sim"]:
        need(f"{BIN}/{name}")
    data = tempfile.mkdtemp(prefix="failover-")
    with scratch_database(args.postgres, "failover") as url:
        dbs = [start([f"{BIN}/account-db", "--listen", "127.0.0.1:0", "--data", data,
                      "--store", url]) for _ in range(2)]
        addrs = ",".join(addr for _, addr in dbs)
        server, addr = start([f"{BIN}/login-server", "--listen", "127.0.0.1:0", "--db", addrs,
                              *token_key_flags(BIN, data),
                              "--db-secret-file", f"{data}/account-db.secret",
                              "--hash-params", "8,1,1"])
        victim = dbs[0][0]
        timer = threading.Timer(args.kill_at + 1.0, lambda: victim.send_signal(signal.SIGKILL))
        timer.start()  # the stress run spends about a second registering its accounts first
        log(f"stress for {args.duration} s; SIGKILL to account-db {dbs[0][1]} at ~{args.kill_at} s")
        out = subprocess.run(
            [f"{BIN}/gateway-sim", "stress", "--target", addr, "--json", "--form", "stream",
             "--connections", "16", "--duration", str(args.duration), "--plot", args.plot],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=False)
        timer.cancel()
        report = json.loads(out.stdout)
        stop(server)
        for proc, _ in dbs:
            if proc.poll() is None:
                stop(proc)
    print("| second | requests/s | p99 ms |")
    print("|---|---|---|")
    for s in report["per_second"]:
        print(f"| {s['second']} | {s['rate']:.0f} | {s['p99_ms']:.1f} |")
    other = {c: n for c, n in report["codes"].items() if c not in ("2", "3", "4")}
    print(f"\nreplies other than 2, 3 and 4 over the run: {other or 'none'}; "
          f"transport errors: {sum(report['transport'].values())}; plot: {args.plot}")


if __name__ == "__main__":
    main()
