#!/usr/bin/env python3
"""Gateway TLS (issue 26) against plaintext, interleaved in one run: throughput of the seed form
(full handshakes, and resumed from tickets) and of the stream form, the server's CPU per request,
and the memory an idle TLS connection holds.

    cargo build --release --workspace --bins
    python3 benches/gateway_tls.py [--rounds 3] [--duration 5] [--idle 2000] [--pin]

Two login-servers (embedded account-db, hash params 8,1,1, so the request path is measured and
not argon2): one with --gateway-tls off, one with required. Each round runs every variant once,
in the same order; the table gives each variant's median and its spread over the rounds. CPU is
login-server's utime + stime over the run, per request answered; gateway-sim runs on the same
cores and pays its own handshakes, so it is reported apart; with --pin the servers run on core 0
and gateway-sim on core 1, so throughput is the server's on one core (as long as gateway-sim
keeps up, which its CPU column shows).

Everything runs on loopback; every load is bounded by --duration.
"""

import argparse
import json
import os
import resource
import socket
import ssl
import statistics
import subprocess
import tempfile
import time

from stress_matrix import BIN, cpu_ticks, need, start, stop

TICKS = os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


PIN_SERVER, PIN_CLIENT = [], []


def run(server, addr, tls_args, form, duration, connections):
    """One gateway-sim stress run; its report, the server's CPU seconds and the client's."""
    before = cpu_ticks(server.pid)
    client_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [*PIN_CLIENT, f"{BIN}/gateway-sim", "stress", "--target", addr, "--json", "--form", form,
         "--connections", str(connections), "--duration", str(duration),
         "--mix", "login=90,register=5,badpass=5", *tls_args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=False)
    client_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu = (cpu_ticks(server.pid) - before) / TICKS
    client_cpu = (client_after.ru_utime + client_after.ru_stime
                  - client_before.ru_utime - client_before.ru_stime)
    report = json.loads(out.stdout)
    return report, server_cpu, client_cpu


def idle_memory(server, addr, ca, count):
    """KiB of server RSS per idle connection: `count` plaintext ones, then `count` TLS ones
    (handshake done, nothing sent), each set measured against the server at rest."""
    host, port = addr.rsplit(":", 1)
    results = {}
    for kind in ["plaintext", "tls"]:
        time.sleep(1)
        base = rss_kib(server.pid)
        conns = []
        context = None
        if kind == "tls":
            context = ssl.create_default_context(cafile=ca)
            context.minimum_version = ssl.TLSVersion.TLSv1_3
        for _ in range(count):
            s = socket.create_connection((host, int(port)), timeout=10)
            if context:
                s = context.wrap_socket(s, server_hostname=host)
            conns.append(s)
        time.sleep(1)
        held = rss_kib(server.pid)
        results[kind] = (held - base) / count
        for s in conns:
            s.close()
    return results


def median_spread(values):
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--idle", type=int, default=2000, help="idle connections for the memory row")
    ap.add_argument("--pin", action="store_true", help="servers on core 0, gateway-sim on core 1")
    args = ap.parse_args()
    if args.pin:
        PIN_SERVER.extend(["taskset", "-c", "0"])
        PIN_CLIENT.extend(["taskset", "-c", "1"])
    for name in ["login-server", "account-db", "gateway-sim"]:
        need(f"{BIN}/{name}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    work = tempfile.mkdtemp(prefix="gateway-tls-")
    pki = f"{work}/pki"
    subprocess.run([f"{BIN}/account-db", "gen-tls", pki, "--name", "127.0.0.1"], check=True,
                   stdout=subprocess.DEVNULL)
    common = ["--listen", "127.0.0.1:0", "--hash-params", "8,1,1",
              "--message-timeout", "60", "--idle-timeout", "120"]
    plain, plain_addr = start([*PIN_SERVER, f"{BIN}/login-server", *common, "--data", f"{work}/plain"])
    tls, tls_addr = start([*PIN_SERVER, f"{BIN}/login-server", *common, "--data", f"{work}/tls",
                           "--gateway-tls", "required", "--tls-cert", f"{pki}/server.pem",
                           "--tls-key", f"{pki}/server.key"])
    ca = ["--tls-ca", f"{pki}/ca.pem"]
    variants = [
        ("seed, plaintext", plain, plain_addr, [], "seed"),
        ("seed, TLS resumed", tls, tls_addr, [*ca, "--tls-resume"], "seed"),
        ("seed, TLS full handshakes", tls, tls_addr, ca, "seed"),
        ("stream, plaintext", plain, plain_addr, [], "stream"),
        ("stream, TLS", tls, tls_addr, ca, "stream"),
    ]
    results = {name: [] for name, *_ in variants}
    for r in range(args.rounds):
        for name, server, addr, tls_args, form in variants:
            report, server_cpu, client_cpu = run(server, addr, tls_args, form, args.duration,
                                                 args.connections)
            n = max(report["requests"], 1)
            errors = sum(report["transport"].values()) + report["unexpected"]
            results[name].append((report["throughput"], report["latency_ms"]["p99"],
                                  server_cpu * 1e6 / n, client_cpu * 1e6 / n, errors))
            print(f"round {r + 1}: {name}: {report['throughput']:.0f} req/s, "
                  f"server {server_cpu * 1e6 / n:.0f} us/req, errors {errors}", flush=True)

    where = ("login-server on core 0, gateway-sim on core 1" if args.pin
             else "gateway-sim on the same cores")
    print(f"\n{args.rounds} rounds of {args.duration} s, {args.connections} connections, "
          f"{os.cpu_count()} cores, {where}.\n")
    print("| variant | req/s | p99 ms | server CPU us/req | gateway-sim CPU us/req | errors |")
    print("|---|---|---|---|---|---|")
    for name, rows in results.items():
        cols = list(zip(*rows))
        print(f"| {name} | {median_spread(cols[0])} | {statistics.median(cols[1]):.1f} | "
              f"{median_spread(cols[2])} | {median_spread(cols[3])} | {sum(cols[4])} |")

    def ratio(a, b):
        pairs = [x[0] / y[0] for x, y in zip(results[a], results[b])]
        return f"{statistics.median(pairs):.2f} ({min(pairs):.2f}-{max(pairs):.2f})"

    print()
    print(f"- seed TLS resumed / seed plaintext, per round: {ratio('seed, TLS resumed', 'seed, plaintext')}")
    print(f"- seed TLS full / seed plaintext, per round: {ratio('seed, TLS full handshakes', 'seed, plaintext')}")
    print(f"- stream TLS / stream plaintext, per round: {ratio('stream, TLS', 'stream, plaintext')}")
    full = [1e6 / row[2] for row in results["seed, TLS full handshakes"]]
    print(f"- full handshakes (with their request) per second per core of server CPU: "
          f"{median_spread(full)}")

    memory = idle_memory(tls, tls_addr, f"{pki}/ca.pem", args.idle)
    print(f"- server memory per idle connection ({args.idle} each): plaintext "
          f"{memory['plaintext']:.1f} KiB, TLS after its handshake {memory['tls']:.1f} KiB")
    stop(plain)
    stop(tls)


if __name__ == "__main__":
    main()
