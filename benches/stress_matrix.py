#!/usr/bin/env python3
"""The stress runs behind BENCHMARKS.md, in one go, so every figure is read against the
floor measured in the same run.

    cargo build --release --workspace --bins --example floor --example two_tier_floor
    # and python3 for benches/seed_replica.py
    cargo bench --bench hash          # for the verification times (the hashing limit)
    python3 benches/stress_matrix.py [--duration SECS] > target/stress-matrix.md

Everything runs on loopback; every load is bounded by --duration and stops by itself.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

BIN = "target/release"
CHEAP, DEFAULT = "8,1,1", "19456,2,1"
CONNECTIONS = [1, 8, 32, 128]
FORMS = ["seed", "stream"]


def need(path):
    """Exit with the build command when a binary the run needs is missing."""
    if not os.access(path, os.X_OK):
        sys.exit(f"{path} is missing: run `cargo build --release --workspace --bins "
                 f"--example floor --example two_tier_floor` first")


def builds(before):
    """The builds to measure, as (label, target/release): this one, after the one in `before`
    (another build's target/release, its servers checked) if given."""
    measured = [("after", BIN)]
    if before:
        for name in ["login-server", "account-db"]:
            need(f"{before}/{name}")
        measured.insert(0, ("before", before))
    return measured


def token_key_flags(bin_dir, data):
    """The flags a login-server with --db needs for its token key, made in `data` with this
    build's `login-server gen-token-key`; none for a build from before session tokens."""
    help_text = subprocess.run([f"{bin_dir}/login-server", "--help"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, check=False).stdout
    if "--token-key-file" not in help_text:
        return []
    path = os.path.join(data, "token.key")
    if not os.path.exists(path):
        subprocess.run([f"{BIN}/login-server", "gen-token-key", path], check=True,
                       stdout=subprocess.DEVNULL)
    return ["--token-key-file", path]


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def start(cmd):
    """Start a server and wait for its 'listening' log line; return (process, addr)."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in proc.stderr:
        if "listening" in line:
            addr = re.search(r"addr=(\S+)", line).group(1)
            # Keep draining its log so it never blocks on a full pipe.
            subprocess.Popen(["cat"], stdin=proc.stderr, stdout=subprocess.DEVNULL)
            return proc, addr
    raise RuntimeError(f"{cmd[0]} exited before listening")


def stop(proc):
    proc.send_signal(2)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def stress(addr, *args):
    out = subprocess.run(
        [f"{BIN}/gateway-sim", "stress", "--target", addr, "--json", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=False)
    return json.loads(out.stdout)


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def row(label, r):
    lat = r["latency_ms"]
    other = {c: n for c, n in r["codes"].items() if c not in ("2", "3", "4")}
    t = r["transport"]
    errors = sum(t.values()) + r["unexpected"]
    return (f"| {label} | {r['throughput']:.0f} | {lat['p50']:.2f} | {lat['p90']:.2f} | "
            f"{lat['p99']:.2f} | {lat['p999']:.2f} | {lat['max']:.2f} | {errors} {other or ''} |")


HEADER = ("| run | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors |\n"
          "|---|---|---|---|---|---|---|---|")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=3)
    ap.add_argument("--flood-only", action="store_true", help="only the default-parameter flood")
    args = ap.parse_args()
    for name in ["login-server", "account-db", "gateway-sim", "examples/floor",
                 "examples/two_tier_floor"]:
        need(f"{BIN}/{name}")
    if not os.path.exists(CRITERION.format(ON_EVERY_CORE)):
        sys.exit("the hashing limit needs the verification times: run "
                 "`cargo bench --bench hash` first")
    dur = str(args.duration)
    cores = os.cpu_count()
    print(f"Runs of {dur} s each; {cores} cores; load generator on the same machine.\n")

    if not args.flood_only:
        matrix(dur, args.duration)
    flood(args.duration, cores)


def floor_table(label, addr, dur):
    """Every form and connection count against a floor at `addr`: its table, and req/s by
    (form, connections)."""
    rates = {}
    for form in FORMS:
        for c in CONNECTIONS:
            r = stress(addr, "--form", form, "--connections", str(c), "--duration", dur,
                       "--mix", "login=1", "--users", "0")
            rates[(form, c)] = r["throughput"]
            print(row(f"{label} {form} c={c}", r))
            log(label, form, c, round(r["throughput"]))
    return rates


def matrix(dur, duration):
    # The floor: a trivial responder.
    floor_proc, floor_addr = start([f"{BIN}/examples/floor", "127.0.0.1:0"])
    print("### Floor (trivial responder)\n\n" + HEADER)
    floor = floor_table("floor", floor_addr, dur)
    stop(floor_proc)

    # The two-tier floor: an event loop relaying each message to a line responder.
    responder, backend = start([f"{BIN}/examples/two_tier_floor", "respond", "127.0.0.1:0"])
    relay, relay_addr = start([f"{BIN}/examples/two_tier_floor", "relay", "127.0.0.1:0", backend])
    print("\n### Two-tier floor (relay + line responder)\n\n" + HEADER)
    floor2 = floor_table("two-tier floor", relay_addr, dur)
    stop(relay)
    stop(responder)

    # The seed's design (a faithful replica in Python), seed form only, as its gateway speaks.
    seed_proc, seed_addr = start([sys.executable, "benches/seed_replica.py", "127.0.0.1:0"])
    seed = {}
    print("\n### The seed's design (benches/seed_replica.py), mix login=90,register=5,badpass=5\n")
    print(HEADER)
    for c in CONNECTIONS:
        r = stress(seed_addr, "--form", "seed", "--connections", str(c), "--duration", dur)
        seed[c] = r["throughput"]
        print(row(f"seed replica c={c}", r))
        log("seed replica", c, round(r["throughput"]))
    stop(seed_proc)

    # login-server, embedded account-db: each hash setting, pooled and --db-pool 0.
    for params in [CHEAP, DEFAULT]:
        run_dur = dur if params == CHEAP else str(max(duration, 5))
        print(f"\n### login-server, hash params {params}, mix login=90,register=5,badpass=5\n")
        print(HEADER)
        ratios = []
        for pool in ["pooled", "0"]:
            data = tempfile.mkdtemp()
            cmd = [f"{BIN}/login-server", "--listen", "127.0.0.1:0", "--data", data,
                   "--hash-params", params]
            if pool == "0":
                cmd += ["--db-pool", "0"]
            proc, addr = start(cmd)
            for form in FORMS:
                for c in CONNECTIONS:
                    r = stress(addr, "--form", form, "--connections", str(c), "--duration", run_dur)
                    label = f"{'pooled' if pool == 'pooled' else 'db-pool 0'} {form} c={c}"
                    print(row(label, r))
                    ratios.append((label, r["throughput"], floor[(form, c)], floor2[(form, c)], c))
                    log(params, label, round(r["throughput"]))
            stop(proc)
            shutil.rmtree(data, ignore_errors=True)
        print("\n| run | req/s | of floor | of two-tier floor | x seed replica |\n"
              "|---|---|---|---|---|")
        for label, rps, fl, fl2, c in ratios:
            vs_seed = f"{rps / seed[c]:.1f}x" if "seed" in label else ""
            print(f"| {label} | {rps:.0f} | {100 * rps / fl:.0f}% | {100 * rps / fl2:.0f}% | "
                  f"{vs_seed} |")



CRITERION = "target/criterion/argon2id default 19456,2,1/{}/new/estimates.json"
ON_EVERY_CORE = "verify on every core"


def criterion_ms(bench):
    """Criterion's mean time of one of benches/hash.rs's default-parameter benches, in ms."""
    with open(CRITERION.format(bench)) as f:
        return json.load(f)["mean"]["point_estimate"] / 1e6


def flood(duration, cores):
    """The default-parameter flood: separate account-db so each tier is measured alone."""
    print("\n### Login flood at default parameters, 128 stream connections\n")
    data = tempfile.mkdtemp()
    db, db_addr = start([f"{BIN}/account-db", "--listen", "127.0.0.1:0", "--data", data])
    ls, addr = start([f"{BIN}/login-server", "--listen", "127.0.0.1:0", "--db", db_addr,
                      "--db-secret-file", os.path.join(data, "account-db.secret"),
                      *token_key_flags(BIN, data)])
    stress(addr, "--form", "stream", "--connections", "8", "--duration", "1", "--users", "100")
    ticks = {p.pid: cpu_ticks(p.pid) for p in (db, ls)}
    flood_secs = max(duration, 10)
    flood_proc = subprocess.Popen(
        [f"{BIN}/gateway-sim", "stress", "--target", addr, "--json", "--form", "stream",
         "--connections", "128", "--mix", "login=1", "--users", "100", "--duration", str(flood_secs)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(2)
    cheap = stress(addr, "--form", "stream", "--connections", "4", "--users", "0",
                   "--mix", "unknown=1,invalid=1,malformed=1", "--rate", "200",
                   "--duration", str(flood_secs - 4))
    flood_report = json.loads(flood_proc.communicate()[0])
    used = {pid: (cpu_ticks(pid) - t) / os.sysconf("SC_CLK_TCK") for pid, t in ticks.items()}
    rss = {p.pid: peak_rss_mib(p.pid) for p in (db, ls)}
    stop(ls)
    stop(db)
    shutil.rmtree(data, ignore_errors=True)
    n = flood_report["requests"] + cheap["requests"]
    logins = flood_report["requests"]
    print(HEADER)
    print(row("login flood", flood_report))
    print(row("cheap requests during it", cheap))
    alone_ms = criterion_ms("verify")
    parallel_ms = criterion_ms(ON_EVERY_CORE)
    limit = cores / (parallel_ms / 1000)
    print(f"\n- one verification (criterion, `cargo bench --bench hash`): {alone_ms:.2f} ms alone, "
          f"{parallel_ms:.2f} ms with one on every core at once; hashing limit {cores} cores / "
          f"{parallel_ms:.2f} ms = {limit:.0f} logins/s; flood throughput "
          f"{flood_report['throughput']:.0f}/s = {100 * flood_report['throughput'] / limit:.0f}% "
          f"of it ({100 * flood_report['throughput'] * alone_ms / 1000 / cores:.0f}% of "
          f"{cores} cores / {alone_ms:.2f} ms)")
    print(f"- CPU for {logins} logins and {cheap['requests']} cheap requests: login-server "
          f"{used[ls.pid]:.2f} s ({1e3 * used[ls.pid] / logins:.1f} ms per login, all counted "
          f"against the logins), account-db {used[db.pid]:.3f} s ({1e3 * used[db.pid] / n:.3f} ms "
          f"per request)")
    print(f"- peak RSS: login-server {rss[ls.pid]:.1f} MiB "
          f"(target < {cores} x 20 + 64 = {cores * 20 + 64} MiB), account-db {rss[db.pid]:.1f} MiB")


if __name__ == "__main__":
    main()
