#!/usr/bin/env python3
"""The "hostile load" table of BENCHMARKS.md: login-server's peak RSS, and a normal client's
p99, while each attack of issue 8 runs from a second process, with the default flags.

    cargo build --release --workspace --bins
    python3 benches/hostile_matrix.py [--before DIR] [--duration SECS] > target/hostile.md
    python3 benches/hostile_matrix.py --tls [--duration SECS]

--tls runs every row against a login-server with --gateway-tls optional (so the plaintext attacks
still reach it) with the normal client over TLS, and adds the TLS rows: connections that send
half a ClientHello and stall, and connections that complete the handshake and never send.

--before DIR names another build's target/release (an older commit built in a worktree, say)
whose login-server and account-db are measured the same way, for a before/after table. The
attacks and the normal client always come from this tree's gateway-sim.

Everything runs on loopback; every attack and load is bounded by --duration and stops by
itself.
"""

import argparse
import json
import subprocess
import tempfile
import time

from stress_matrix import BIN, builds as measured_builds, log, need, peak_rss_mib, start, stop, token_key_flags

ATTACKS = [
    ("1: throttle-table fill", "throttle-fill", 1),
    ("2: 60 KB ip values", "ip-bloat", 1),
    ("7: clients that never read", "no-read", 2000),
    ("8: whitespace", "whitespace", 2000),
    ("10: silent account-db handshakes", "handshake", 2000),
]

TLS_ATTACKS = [
    ("11: half a ClientHello, stalled", "tls-half-hello", 2000),
    ("12: TLS handshake done, then silence", "tls-silent", 2000),
]


def measure(servers, kind, connections, duration, tls=False):
    """One row: start the tiers, attack, run a normal client meanwhile; RSS and p99. `tls`: the
    login-server serves gateways TLS (optional), and the normal client and the TLS attacks
    speak it."""
    data = tempfile.mkdtemp(prefix="hostile-")
    procs = []
    gateway_tls, client_tls = [], []
    if tls:
        pki = f"{data}/pki"
        subprocess.run([f"{servers}/account-db", "gen-tls", pki, "--name", "127.0.0.1"],
                       check=True, stdout=subprocess.DEVNULL)
        gateway_tls = ["--gateway-tls", "optional", "--tls-cert", f"{pki}/server.pem",
                       "--tls-key", f"{pki}/server.key"]
        client_tls = ["--tls-ca", f"{pki}/ca.pem"]
    if kind == "handshake":
        db, db_addr = start([f"{servers}/account-db", "--listen", "127.0.0.1:0", "--data", data])
        procs.append(db)
        server, addr = start([f"{servers}/login-server", "--listen", "127.0.0.1:0",
                              "--db", db_addr, "--db-secret-file", f"{data}/account-db.secret",
                              *token_key_flags(servers, data), *gateway_tls])
        target = db_addr
    else:
        server, addr = start([f"{servers}/login-server", "--listen", "127.0.0.1:0",
                              "--data", data, *gateway_tls])
        target = addr
    procs.append(server)
    attack = subprocess.Popen(
        [f"{BIN}/gateway-sim", "attack", "--target", target, "--kind", kind,
         "--connections", str(connections), "--duration", str(duration),
         *(client_tls if kind.startswith("tls-") else [])],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(1)
    normal = subprocess.run(
        [f"{BIN}/gateway-sim", "stress", "--target", addr, "--json", "--form", "stream",
         "--connections", "4", "--rate", "20", "--users", "20",
         "--duration", str(max(duration - 2, 1)), *client_tls],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=False)
    attack_out, _ = attack.communicate(timeout=duration + 30)
    rss = peak_rss_mib(server.pid)
    for proc in procs:
        stop(proc)
    try:
        report = json.loads(normal.stdout)
        p99 = f"{report['latency_ms']['p99']:.1f}"
        codes = " ".join(f"{c}:{n}" for c, n in sorted(report["codes"].items()))
        transport = sum(report["transport"].values())
    except (ValueError, KeyError):
        p99, codes, transport = "n/a", "no report", "n/a"
    outcome = json.loads(attack_out) if attack_out.strip() else {}
    return rss, p99, codes, transport, outcome


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per attack")
    parser.add_argument("--before", help="target/release of another build to compare")
    parser.add_argument("--only", help="run only the attacks whose kind contains this")
    parser.add_argument("--tls", action="store_true",
                        help="gateway TLS on, the normal client over it, and the TLS rows")
    args = parser.parse_args()
    for name in ["login-server", "account-db", "gateway-sim"]:
        need(f"{BIN}/{name}")
    builds = measured_builds(args.before)
    print("| attack | build | peak RSS MiB | normal p99 ms | normal codes | normal transport errors | attack: connected / closed by server / sent |")
    print("|---|---|---|---|---|---|---|")
    for label, kind, connections in ATTACKS + (TLS_ATTACKS if args.tls else []):
        if args.only and args.only not in kind:
            continue
        for build, servers in builds:
            log(f"{label}, {build}")
            rss, p99, codes, transport, out = measure(servers, kind, connections, args.duration,
                                                      args.tls)
            attack = f"{out.get('connected', '?')} / {out.get('closed_by_server', '?')} / {out.get('sent', '?')}"
            print(f"| {label} | {build} | {rss:.0f} | {p99} | {codes} | {transport} | {attack} |",
                  flush=True)


if __name__ == "__main__":
    main()
