#!/usr/bin/env python3
"""The cheap path on the Patroni cluster against a single PostgreSQL (BENCHMARKS.md, "PostgreSQL
on Patroni"): one login-server and account-db pair (this build) on a scratch database of each,
interleaved, --repeat times; medians with every run. Two loads at --hash-params 8,1,1 and 32
stream-form connections: gateway-sim's default mix (mostly logins: reads) and registrations
only (each a commit the synchronous standby must confirm on the cluster).

    cargo build --release --workspace --bins
    python3 benches/ha_cheap_path.py [--duration SECS] [--repeat N]

The cluster is deploy/ha/local-cluster.sh's (needs root, patroni and etcd-server), started in
a temporary directory and stopped at the end; the single PostgreSQL is --postgres. Loopback
only; every load is bounded by --duration.
"""

import argparse
import contextlib
import os
import statistics
import subprocess
import tempfile

from hot_path import pair
from stress_matrix import BIN, log, need
from store_matrix import scratch_database

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "deploy", "ha", "local-cluster.sh")
LOADS = [
    ("default mix", ["--form", "stream"]),
    ("registrations only", ["--form", "stream", "--users", "0", "--mix", "register=1"]),
]


@contextlib.contextmanager
def cluster(port):
    """deploy/ha/local-cluster.sh's cluster on HA_PORT `port`: its --store URL."""
    directory = tempfile.mkdtemp(prefix="ha-bench-")
    env = {**os.environ, "HA_PORT": str(port)}
    out = subprocess.run([SCRIPT, "start", directory], env=env, check=True, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        yield out.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([SCRIPT, "stop", directory], env=env, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each")
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/test")
    parser.add_argument("--ha-port", type=int, default=25000)
    args = parser.parse_args()
    for name in ["login-server", "account-db", "gateway-sim"]:
        need(f"{BIN}/{name}")
    stores = ["single PostgreSQL", "Patroni cluster (synchronous)"]
    results = {(load, store): [] for load, _ in LOADS for store in stores}
    with cluster(args.ha_port) as url:
        admins = dict(zip(stores, [args.postgres, url]))
        for _ in range(max(args.repeat, 1)):
            for load, flags in LOADS:
                for store in stores:
                    with scratch_database(admins[store], "hacheap") as db:
                        # The scratch URL lost the query: every host is asked for the writable
                        # node anyway.
                        report = pair(BIN, ["--store", db], [], args.duration, flags)
                    results[(load, store)].append(report)
                    log(load, store, round(report["throughput"]))
    print("| load (32 connections, hash 8,1,1) | store | req/s (median) | every run | "
          "p50 ms | p99 ms (median run) |")
    print("|---|---|---|---|---|---|")
    for load, _ in LOADS:
        medians = {}
        for store in stores:
            runs = results[(load, store)]
            mid = sorted(runs, key=lambda r: r["throughput"])[len(runs) // 2]
            medians[store] = statistics.median(r["throughput"] for r in runs)
            every = " / ".join(str(round(r["throughput"])) for r in runs)
            print(f"| {load} | {store} | {round(medians[store])} | {every} | "
                  f"{mid['latency_ms']['p50']:.2f} | {mid['latency_ms']['p99']:.2f} |")
        ratio = medians[stores[1]] / medians[stores[0]]
        print(f"| {load} | cluster / single | {ratio:.0%} | | | |")


if __name__ == "__main__":
    main()
