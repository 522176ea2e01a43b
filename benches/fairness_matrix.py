#!/usr/bin/env python3
"""The "Fair under overload" table of BENCHMARKS.md: a normal player's codes and p99 while an
attacker floods the same login-server from the same two cores, before and after, interleaved.

    cargo build --release --workspace --bins
    python3 benches/fairness_matrix.py --before DIR [--duration SECS] [--repeat N] > target/fair.md

(a) 2,000 direct connections, each pipelining 8 wrong-password logins and reading the replies
    (`gateway-sim stress --form stream --connections 2000 --pipeline 8 --mix badpass=1`), no
    --allow-from; the normal client is `gateway-sim stress --form stream --connections 20 --rate
    20 --mix login=1` (default-parameter logins at 20 a second), started a second later.
(b) one gateway connection carrying a bot's logins (its right password: a hash each, never
    throttled) from 200 rotating addresses, pipelined,
    and a player logging in at 20 a second on it (`gateway-sim attack --kind shared-gateway`).
(c) the same from one attacker address (the flood is one player).
cheap: no attack; the cheap path's throughput (--hash-params 8,1,1, `gateway-sim stress --form
    stream --connections 32 --pipeline 8`, the default mix), to see that the fairness lookup
    costs nothing measurable.
--nice adds rows of this build run under `nice -n -10` (as root): the server's threads then win
the cores from the attacker's thousands of threads, as a CPU weight for the service would.

Each login-server runs with its default flags on a fresh --data. --before DIR names another
build's target/release; its runs alternate with this build's (--repeat times each). Everything
runs on loopback and stops by itself.
"""

import argparse
import json
import statistics
import subprocess
import tempfile
import time

from stress_matrix import BIN, builds as measured_builds, log, need, start, stop


def login_server(servers, nice, *flags):
    data = tempfile.mkdtemp(prefix="fair-")
    cmd = [f"{servers}/login-server", "--listen", "127.0.0.1:0", "--data", data, *flags]
    return start((["nice", "-n", "-10"] if nice else []) + cmd)


def scenario_a(servers, duration, nice):
    server, addr = login_server(servers, nice)
    # The normal client's accounts first, so its measured run only logs in.
    subprocess.run([f"{BIN}/gateway-sim", "stress", "--target", addr, "--requests", "1",
                    "--users", "20", "--prefix", "normal", "--mix", "login=1"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    attack = subprocess.Popen(
        [f"{BIN}/gateway-sim", "stress", "--target", addr, "--json", "--form", "stream",
         "--connections", "2000", "--pipeline", "8", "--mix", "badpass=1", "--users", "20",
         "--prefix", "flood", "--duration", str(duration), "--setup-timeout", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(3)
    normal = subprocess.run(
        [f"{BIN}/gateway-sim", "stress", "--target", addr, "--json", "--form", "stream",
         "--connections", "20", "--rate", "20", "--mix", "login=1", "--users", "20",
         "--prefix", "normal", "--duration", str(max(duration - 5, 1))],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=False)
    flood_out, _ = attack.communicate(timeout=duration + 180)
    stop(server)
    report = json.loads(normal.stdout)
    flood = json.loads(flood_out) if flood_out.strip() else {}
    return {
        "p99": report["latency_ms"]["p99"],
        "codes": report["codes"],
        "sent": report["requests"] + report["unfinished"],
        "flood": flood.get("codes", {}),
    }


def scenario_b(servers, duration, nice, addresses=200):
    server, addr = login_server(servers, nice)
    out = subprocess.run(
        [f"{BIN}/gateway-sim", "attack", "--target", addr, "--kind", "shared-gateway",
         "--addresses", str(addresses), "--duration", str(duration)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=False)
    stop(server)
    outcome = json.loads(out.stdout)
    player = outcome["player"]
    return {
        "p99": player["p99_ms"],
        "codes": player["codes"],
        "sent": player["sent"],
        "flood": outcome["flood"]["codes"],
        "unanswered": outcome["unanswered"],
    }


def scenario_c(servers, duration, nice):
    return scenario_b(servers, duration, nice, addresses=1)


def scenario_cheap(servers, duration, nice):
    server, addr = login_server(servers, nice, "--hash-params", "8,1,1")
    out = subprocess.run(
        [f"{BIN}/gateway-sim", "stress", "--target", addr, "--json", "--form", "stream",
         "--connections", "32", "--pipeline", "8", "--duration", str(min(duration, 8))],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=False)
    stop(server)
    report = json.loads(out.stdout)
    return {"p99": report["latency_ms"]["p99"], "codes": report["codes"],
            "sent": report["requests"], "flood": {}, "throughput": report["throughput"]}


def spread(values):
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before", help="target/release of another build to compare")
    parser.add_argument("--only", choices=["a", "b", "c", "cheap"], help="run one scenario")
    parser.add_argument("--nice", action="store_true",
                        help="also run this build under nice -n -10 (needs root)")
    args = parser.parse_args()
    for name in ["login-server", "gateway-sim"]:
        need(f"{BIN}/{name}")
    builds = [(label, servers, False) for label, servers in measured_builds(args.before)]
    if args.nice:
        builds.append(("after, nice -10", BIN, True))
    scenarios = [("a", scenario_a), ("b", scenario_b), ("c", scenario_c), ("cheap", scenario_cheap)]
    results = {}
    for rep in range(args.repeat):
        for name, run in scenarios:
            if args.only and args.only != name:
                continue
            for build, servers, nice in builds:
                if name == "cheap" and nice:
                    continue
                log(f"({name}) {build}, run {rep + 1}")
                r = run(servers, args.duration, nice)
                log(f"  {json.dumps(r)}")
                results.setdefault((name, build), []).append(r)
    print("| scenario | build | normal p99 ms, median (range) | normal answered 7, median (range) "
          "| normal sent (cheap: req/s) | each run's normal codes | flood codes (last run) |")
    print("|---|---|---|---|---|---|---|")
    for (name, build), runs in results.items():
        p99 = spread([r["p99"] for r in runs])
        shed = spread([r["codes"].get("7", 0) for r in runs])
        sent = spread([r.get("throughput", r["sent"]) for r in runs])
        codes = "; ".join(" ".join(f"{c}:{n}" for c, n in sorted(r["codes"].items()))
                          for r in runs)
        flood = " ".join(f"{c}:{n}" for c, n in sorted(runs[-1]["flood"].items()))
        print(f"| ({name}) | {build} | {p99} | {shed} | {sent} | {codes} | {flood} |",
              flush=True)


if __name__ == "__main__":
    main()
