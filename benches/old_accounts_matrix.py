#!/usr/bin/env python3
"""Rows 2 and 3 of the third attack (issue 22) for BENCHMARKS.md's hostile table: a normal
client's p99 and codes, and login-server's peak RSS, while
  2: four wrong-password logins at once hit an account whose stored hash costs far more than
     the configured parameters (argon2 m=262144 KiB, t=32, about 200x the default work: made by
     a login-server started with those parameters, then restarted at the defaults; five wrong
     logins would lock the account, so four is what an attacker gets per lockout), and
  3: an old account server (--legacy-db) answers every question 1.9 s late while unknown names
     log in at 10/s,
with the default flags otherwise. The normal client logs in local accounts at 10/s.

    cargo build --release --workspace --bins
    python3 benches/old_accounts_matrix.py [--before DIR] [--duration SECS]

--before DIR names another build's target/release for a before/after table. Everything runs
on loopback and stops by itself within --duration (plus a few seconds of grace).
"""

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time

from stress_matrix import BIN, builds as measured_builds, log, need, peak_rss_mib, start, stop

COSTLY_PARAMS = "262144,32,1"


def seed(addr, op, username, password, timeout=30.0):
    """One seed-form request; its code, or None when the server did not answer in time."""
    host, port = addr.rsplit(":", 1)
    message = json.dumps([{"OP": op, "username": username, "password": password}]).encode()
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as s:
            s.sendall(message)
            reply = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return json.loads(reply)[0]["code"]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def helps(servers, flag):
    """Whether this build's login-server knows `flag`."""
    text = subprocess.run([f"{servers}/login-server", "--help"], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True, check=False).stdout
    return flag in text


def normal_client(addr, duration):
    """gateway-sim at 10 local logins a second for `duration`: its JSON report."""
    out = subprocess.run(
        [f"{BIN}/gateway-sim", "stress", "--target", addr, "--json", "--form", "stream",
         "--connections", "4", "--rate", "10", "--users", "20", "--mix", "login=100",
         "--duration", str(duration)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=False)
    return json.loads(out.stdout)


def flood(stop_at, every, request):
    """Run `request` in a thread of its own every `every` seconds until `stop_at`; the codes."""
    codes, threads = [], []

    def one():
        codes.append(request())

    while time.monotonic() < stop_at:
        t = threading.Thread(target=one)
        t.start()
        threads.append(t)
        time.sleep(every)
    for t in threads:
        t.join(timeout=40)
    return codes


def costly(servers, duration):
    data = tempfile.mkdtemp(prefix="costly-")
    try:
        server, addr = start([f"{servers}/login-server", "--listen", "127.0.0.1:0", "--data",
                              data, "--hash-params", COSTLY_PARAMS])
        assert seed(addr, "register", "costly-one", "costly-pass-1") == 4
        stop(server)
        server, addr = start([f"{servers}/login-server", "--listen", "127.0.0.1:0", "--data",
                              data])
        # The normal client first, then four wrong logins at once a second into it.
        normal = threading.Thread(target=lambda: reports.append(
            normal_client(addr, max(duration - 2, 1))))
        reports = []
        normal.start()
        time.sleep(1)
        attackers = [threading.Thread(target=seed, args=(addr, "login", "costly-one",
                                                         "wrong-pass-1", 60.0))
                     for _ in range(4)]
        for a in attackers:
            a.start()
        normal.join()
        report = reports[0]
        for a in attackers:
            a.join(timeout=60)
        rss = peak_rss_mib(server.pid)
        stop(server)
        return rss, report, "4 wrong logins at once"
    finally:
        shutil.rmtree(data, ignore_errors=True)


def slow_old_server():
    """An old server that answers every question 1.9 s late ("no such user"): its address."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)

    def serve(conn):
        try:
            conn.settimeout(10)
            conn.sendall(b"Welcome!")
            conn.recv(4096)
            time.sleep(1.9)
            conn.sendall(b'[{"password":"None"}]')
            conn.recv(4096)
            conn.sendall(b"Close!")
        except OSError:
            pass
        finally:
            conn.close()

    def accept():
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return "%s:%d" % listener.getsockname()


def slow_old(servers, duration):
    data = tempfile.mkdtemp(prefix="slow-old-")
    try:
        flags = ["--legacy-db", slow_old_server()]
        if helps(servers, "--legacy-open-registration"):
            flags.append("--legacy-open-registration")  # the normal client registers first
        server, addr = start([f"{servers}/login-server", "--listen", "127.0.0.1:0", "--data",
                              data, *flags])
        # The normal client's accounts, registered before the flood.
        normal_client(addr, 1)
        stop_at = time.monotonic() + duration
        counter = iter(range(10**9))
        flooding = threading.Thread(target=flood, args=(
            stop_at, 0.1, lambda: seed(addr, "login", f"ghost{next(counter)}", "ghost-pass-1")))
        flooding.start()
        time.sleep(1)
        report = normal_client(addr, max(duration - 2, 1))
        flooding.join(timeout=60)
        rss = peak_rss_mib(server.pid)
        stop(server)
        return rss, report, "unknown names at 10/s"
    finally:
        shutil.rmtree(data, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per attack")
    parser.add_argument("--before", help="target/release of another build to compare")
    parser.add_argument("--only", help="run only the attacks whose label contains this")
    args = parser.parse_args()
    for name in ["login-server", "gateway-sim"]:
        need(f"{BIN}/{name}")
    print("| attack | build | peak RSS MiB | normal p99 ms (answered) | normal codes | normal unanswered at the end / never sent | attack |")
    print("|---|---|---|---|---|---|---|")
    parser_only = args.only
    for label, run in [("2: costly stored hash", costly), ("3: slow old server", slow_old)]:
        if parser_only and parser_only not in label:
            continue
        for build, servers in measured_builds(args.before):
            log(f"{label}, {build}")
            rss, report, attack = run(servers, args.duration)
            codes = " ".join(f"{c}:{n}" for c, n in sorted(report["codes"].items()))
            p99 = report["latency_ms"]["p99"]
            unanswered = report["unfinished"] + sum(report["transport"].values())
            print(f"| {label} | {build} | {rss:.0f} | {p99:.1f} | {codes} | {unanswered} / "
                  f"{report['unsent']} | {attack} |", flush=True)


if __name__ == "__main__":
    main()
