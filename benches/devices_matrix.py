#!/usr/bin/env python3
"""Device logins beside cheap password logins (BENCHMARKS.md, "Devices and guests"), in one
run: login-server and a separate account-db at --hash-params 8,1,1, 32 connections, on SQLite
and on PostgreSQL, stream and seed form. Each load runs on a fresh pair: password logins
(`--mix login=1`) with this build and, given --before, an older one right before it; device
logins (`--mix device=1`: the guests of --users devices, made before the measured run) with
this build. --repeat N runs everything N times, builds alternating, and reports each figure's
median run with every run's figure beside it: the machine is shared and noisy.

    cargo build --release --workspace --bins
    python3 benches/devices_matrix.py [--duration SECS] [--repeat N] [--postgres URL] [--before DIR]

Everything runs on loopback; every load is bounded by --duration and stops by itself.
"""

import argparse
import contextlib
import shutil
import tempfile

from stress_matrix import BIN, builds as measured_builds, log, need, start, stop, token_key_flags
from store_matrix import scratch_database, stress

CHEAP = "8,1,1"
FORMS = ["stream", "seed"]


def pair(bin_dir, store_flags, duration, mix, form):
    """One load of `mix` in `form` against a fresh login-server and account-db."""
    data = tempfile.mkdtemp(prefix="devices-")
    db, db_addr = start([f"{bin_dir}/account-db", "--listen", "127.0.0.1:0", "--data", data,
                         *store_flags])
    server, addr = start([f"{bin_dir}/login-server", "--listen", "127.0.0.1:0",
                          "--db", db_addr, "--db-secret-file", f"{data}/account-db.secret",
                          *token_key_flags(bin_dir, data), "--hash-params", CHEAP])
    report = stress(addr, duration, "--connections", "32", "--form", form, "--mix", mix,
                    "--users", "100")
    stop(server)
    stop(db)
    shutil.rmtree(data, ignore_errors=True)
    return report


def one_run(builds, postgres, duration):
    """Every load once: {(store, form, kind, build): report}."""
    results = {}
    for store in ["SQLite", "PostgreSQL"]:
        for form in FORMS:
            loads = [("password logins", "login=1", build, bin_dir) for build, bin_dir in builds]
            loads.append(("device logins", "device=1", "after", BIN))
            for kind, mix, build, bin_dir in loads:
                with contextlib.ExitStack() as stack:
                    flags = []
                    if store == "PostgreSQL":
                        flags = ["--store", stack.enter_context(scratch_database(postgres, "dev"))]
                    report = pair(bin_dir, flags, duration, mix, form)
                results[(store, form, kind, build)] = report
                log(store, form, kind, build, round(report["throughput"]),
                    report.get("codes"))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load")
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/test")
    parser.add_argument("--before", help="target/release of another build to compare")
    parser.add_argument("--repeat", type=int, default=3, help="runs of everything; medians")
    args = parser.parse_args()
    for name in ["login-server", "account-db", "gateway-sim"]:
        need(f"{BIN}/{name}")
    builds = measured_builds(args.before)
    runs = [one_run(builds, args.postgres, args.duration) for _ in range(max(args.repeat, 1))]

    def median(key):
        ranked = sorted((r[key] for r in runs), key=lambda r: r["throughput"])
        return ranked[len(ranked) // 2]

    def every(key):
        return " / ".join(f"{r[key]['throughput']:.0f}" for r in runs)

    print("| store, form (32 connections, hash 8,1,1) | load | build | req/s (median) | "
          "every run's req/s | p99 ms | codes |")
    print("|---|---|---|---|---|---|---|")
    for key in runs[0]:
        store, form, kind, build = key
        r = median(key)
        print(f"| {store}, {form} form | {kind} | {build} | {r['throughput']:.0f} | {every(key)} | "
              f"{r['latency_ms']['p99']:.2f} | {r.get('codes')} |")
    print()
    for store in ["SQLite", "PostgreSQL"]:
        for form in FORMS:
            base = (store, form, "password logins", "after")
            device = (store, form, "device logins", "after")
            ratios = [r[device]["throughput"] / r[base]["throughput"] for r in runs]
            print(f"- {store}, {form} form: device / password logins, per run: "
                  + " / ".join(f"{x:.0%}" for x in ratios)
                  + f"; median {sorted(ratios)[len(ratios) // 2]:.0%}")
            if args.before:
                before = (store, form, "password logins", "before")
                ratios = [r[base]["throughput"] / r[before]["throughput"] for r in runs]
                print(f"- {store}, {form} form: password logins after / before, per run: "
                      + " / ".join(f"{x:.0%}" for x in ratios)
                      + f"; median {sorted(ratios)[len(ratios) // 2]:.0%}")


if __name__ == "__main__":
    main()
