#!/usr/bin/env python3
"""The Patroni failover timeline of BENCHMARKS.md ("PostgreSQL on Patroni"): tests/ha.rs's kill
-9 of the primary's postmaster and Patroni under a load through two login-servers and two
account-dbs, its outcomes bucketed per 100 ms from the kill: answered as asked (3 or 4), 7, or
anything else. Prints the table (runs of identical empty buckets merged) and draws an SVG.

    HA_TIMELINE=target/ha-timeline.csv cargo test --release --test ha
    python3 benches/ha_timeline.py target/ha-timeline.csv --plot docs/ha-failover.svg

(The test needs root, patroni and etcd-server: deploy/ha/local-cluster.sh's cluster.)
"""

import argparse
import csv
from collections import Counter

BUCKET_MS = 100


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv")
    parser.add_argument("--plot", default="target/ha-failover.svg")
    parser.add_argument("--before-ms", type=int, default=1000, help="shown before the kill")
    args = parser.parse_args()
    buckets = {}
    with open(args.csv) as f:
        for row in csv.DictReader(f):
            ms, code = int(row["ms"]), int(row["code"])
            if ms < -args.before_ms:
                continue
            ok = (row["op"] == "login" and code == 3) or (row["op"] == "register" and code == 4)
            kind = "ok" if ok else ("7" if code == 7 else "other")
            buckets.setdefault(ms // BUCKET_MS, Counter())[kind] += 1
    first, last = min(buckets), max(buckets)
    rows = [(b, buckets.get(b, Counter())) for b in range(first, last + 1)]
    print("| from the kill (s) | answered 3 or 4 | answered 7 | other |")
    print("|---|---|---|---|")
    i = 0
    while i < len(rows):
        b, c = rows[i]
        j = i
        # A run of buckets with nothing answered as asked is one row.
        while c["ok"] == 0 and j + 1 < len(rows) and rows[j + 1][1]["ok"] == 0:
            j += 1
        total = Counter()
        for _, cj in rows[i:j + 1]:
            total.update(cj)
        span = f"{b / 10:.1f}" if j == i else f"{b / 10:.1f} to {(rows[j][0] + 1) / 10:.1f}"
        print(f"| {span} | {total['ok']} | {total['7']} | {total['other']} |")
        i = j + 1
    width, height, pad = 900, 240, 40
    scale_x = (width - 2 * pad) / max(len(rows), 1)
    peak = max(sum(c.values()) for _, c in rows) or 1
    scale_y = (height - 2 * pad) / peak
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<text x="{pad}" y="16">Requests per 100 ms through a Patroni failover '
             f'(kill -9 of the primary at 0 s): green answered, red 7, grey other</text>']
    for k, (b, c) in enumerate(rows):
        x = pad + k * scale_x
        y = height - pad
        for kind, colour in [("ok", "#2a9d2a"), ("7", "#d33"), ("other", "#888")]:
            h = c[kind] * scale_y
            if h:
                parts.append(f'<rect x="{x:.1f}" y="{y - h:.1f}" width="{max(scale_x - 0.5, 0.5):.1f}" '
                             f'height="{h:.1f}" fill="{colour}"/>')
                y -= h
        if b % 10 == 0:
            parts.append(f'<text x="{x:.1f}" y="{height - pad + 14}">{b // 10}s</text>')
    parts.append(f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" '
                 f'y2="{height - pad}" stroke="black"/>')
    parts.append("</svg>")
    with open(args.plot, "w") as f:
        f.write("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
