"""Prints `make bench-scale` results (bench/scale.sh) as one Markdown table: a row per
scenario with etcd's figure, kvstore's, the ratio the goal is about, the goal, and
whether this run met it.

The input has one JSON object a line: {"round", "system", "step", "value"}, where the
value is a kvbench report or a measurement of the script's (restart and join seconds,
RSS and disk bytes). A cell is the median over the rounds; a ratio is the ratio of the
medians. With more than one round, each round's own ratios follow the table.
"""
import json
import os
import platform
import statistics
import sys

rows = [json.loads(line) for line in open(sys.argv[1])]
config = next(r["value"] for r in rows if r["step"] == "config")
data = {}  # (system, step) -> {round: value}; a step run more than once keeps the last
for r in rows:
    if r["step"] != "config":
        data.setdefault((r["system"], r["step"]), {})[r["round"]] = r["value"]
rounds = sorted({r["round"] for r in rows if r["step"] != "config"})


def values(system, step, get):
    out = {}
    for rnd, v in data.get((system, step), {}).items():
        try:
            x = get(v)
        except (KeyError, TypeError, ValueError):
            x = None
        if x is not None:
            out[rnd] = x
    return out


def median(system, step, get):
    vs = values(system, step, get)
    return statistics.median(vs.values()) if vs else None


def errors(system, step):
    """Failed operations over the rounds, by code, as a note for the cell."""
    total = {}
    for v in data.get((system, step), {}).values():
        for code, n in (v.get("errors") or {}).items():
            total[code] = total.get(code, 0) + n
        if v.get("behind"):
            total["behind"] = total.get("behind", 0) + v["behind"]
    return f" ({', '.join(f'{n} {c}' for c, n in sorted(total.items()))})" if total else ""


def num(x, digits=0):
    return "-" if x is None else f"{x:,.{digits}f}"


def ratio(mine, theirs):
    return None if mine is None or not theirs else mine / theirs


def rx(x):
    return "-" if x is None else f"{x:.2f}x"


def met(ok):
    return "-" if ok is None else ("yes" if ok else "**no**")


def size_label(size):
    for unit, factor in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


E, K, P = "etcd", "kvstore", "kvstore postgres"
tput = lambda r: r["throughput"]
p99 = lambda r: r["latency_ms"]["p99"]
p999 = lambda r: r["latency_ms"]["p999"]
table = []  # (row no, scenario, etcd cell, kvstore cell, ratio cell, goal, met)
per_round = []  # lines: each round's ratio

n, value = config["n"], config["value"]
big, big_value = config["big_keys"], config["big_value"]


def round_ratios(label, step, get):
    if len(rounds) < 2:
        return
    a, b = values(K, step, get), values(E, step, get)
    each = [f"{a[i] / b[i]:.2f}x" for i in rounds if i in a and b.get(i)]
    if each:
        per_round.append(f"- {label}: {', '.join(each)}")


# 1. YCSB A and B.
for mix, share in (("a", "50%"), ("b", "5%")):
    step = f"ycsb_{mix}"
    e, k = median(E, step, tput), median(K, step, tput)
    r = ratio(k, e)
    table.append((1, f"YCSB {mix.upper()} ({share} writes), Zipfian over the {n:,} keys: ops/s",
                  num(e) + errors(E, step), num(k) + errors(K, step), rx(r), "≥ 2x",
                  met(None if r is None else r >= 2)))
    round_ratios(f"YCSB {mix.upper()}", step, tput)

# 2. Open loop at half of etcd's closed-loop write rate.
rate = median(E, "open_loop", lambda r: r["rate"])
etcd_max = median(E, "empty_writes", tput)
for label, get, q in (("p99", p99, "p99"), ("p99.9", p999, "p999")):
    e, k = median(E, "open_loop", get), median(K, "open_loop", get)
    r = ratio(k, e)
    table.append((2, f"Open loop, writes at {num(rate)}/s (half of etcd's {num(etcd_max)}/s): {label} ms",
                  num(e, 1) + errors(E, "open_loop"), num(k, 1) + errors(K, "open_loop"), rx(r),
                  "≤ 0.5x", met(None if r is None else r <= 0.5)))
    round_ratios(f"open loop {label}", "open_loop", get)

# 3. Writes with N keys against the same system's empty-store rate.
cells, share = {}, {}
for s in (E, K):
    full, empty = median(s, "n_writes", tput), median(s, "empty_writes", tput)
    share[s] = ratio(full, empty)
    cells[s] = (f"{num(full)} ({share[s] * 100:.0f}% of {num(empty)} empty)" if share[s] is not None
                else num(full)) + errors(s, "n_writes")
table.append((3, f"Writes/s with {n:,} keys preloaded, against the empty store's",
              cells[E], cells[K],
              "-" if share[K] is None else f"kvstore keeps {share[K] * 100:.0f}%",
              "kvstore ≥ 90%", met(None if share[K] is None else share[K] >= 0.9)))

# 4. Large values.
e, k = median(E, "big_writes", tput), median(K, "big_writes", tput)
mib = lambda x: "" if x is None else f" ({x * big_value / (1 << 20):,.0f} MiB/s)"
r = ratio(k, e)
table.append((4, f"{big:,} keys of {size_label(big_value)}: writes/s",
              num(e) + mib(e) + errors(E, "big_writes"), num(k) + mib(k) + errors(K, "big_writes"),
              rx(r), "≥ 2x", met(None if r is None else r >= 2)))
round_ratios(f"{size_label(big_value)} writes", "big_writes", tput)
e, k = median(E, "big_writes", p99), median(K, "big_writes", p99)
table.append((4, f"{big:,} keys of {size_label(big_value)}: write p99 ms", num(e, 1), num(k, 1),
              rx(ratio(k, e)), "-", "-"))

# 5. Restart of a follower.
secs = lambda r: r["seconds"]
e, k = median(E, "restart", secs), median(K, "restart", secs)
r = ratio(k, e)
table.append((5, f"Restart of a follower holding the {n:,} keys (SIGTERM, started again) until it "
                 "serves (kvstore `/ready`, etcd `/health`): s",
              num(e, 2), num(k, 2), rx(r), "≤ 5 s and ≤ etcd",
              met(None if k is None or r is None else k <= 5 and r <= 1)))
round_ratios("restart", "restart", secs)

# 6. A new member joins.
e, k = median(E, "join", secs), median(K, "join", secs)
r = ratio(k, e)
table.append((6, f"A new empty member joins the {n:,}-key cluster, until caught up: s",
              num(e, 2), num(k, 2), rx(r), "≤ etcd", met(None if r is None else r <= 1)))
round_ratios("join", "join", secs)

# 7. RSS.
mb = 1 << 20
e, k = median(E, "rss", max), median(K, "rss", max)
each = lambda s: ", ".join(num(median(s, "rss", lambda v, i=i: v[i]) / mb) for i in range(3)) \
    if (s, "rss") in data else "-"
r = ratio(k, e)
table.append((7, f"RSS of each node with the {n:,} keys, MiB (largest; then nodes 1-3)",
              f"{num(e and e / mb)} ({each(E)})", f"{num(k and k / mb)} ({each(K)})",
              rx(r), "≤ etcd", met(None if r is None else r <= 1)))
round_ratios("RSS", "rss", max)

# 8. Disk per live byte.
live = config["live_bytes"]
per_byte = lambda v: statistics.mean(v["bytes"]) / live
e, k = median(E, "disk", per_byte), median(K, "disk", per_byte)
disk_mib = lambda s: "" if (s, "disk") not in data else \
    f" ({median(s, 'disk', lambda v: statistics.mean(v['bytes'])) / mb:,.1f} MiB a node)"
r = ratio(k, e)
table.append((8, f"Disk bytes per live byte after {config['overwrites']} overwrites of every key "
                 f"({live / mb:,.1f} MiB live; mean of the nodes' data dirs; etcd compacted and "
                 "defragmented)",
              num(e, 2) + disk_mib(E), num(k, 2) + disk_mib(K), rx(r), "≤ etcd",
              met(None if r is None else r <= 1)))
round_ratios("disk per live byte", "disk", per_byte)

# 9. PostgreSQL.
skipped = [v["skipped"] for v in data.get((P, "pg_writes"), {}).values() if "skipped" in v]
e, k = median(E, "empty_writes", tput), median(P, "pg_writes", tput)
r = ratio(k, e)
table.append((9, "kvstore 3 nodes on PostgreSQL (kvstore column): writes/s against etcd 3's, "
                 "empty store",
              num(e), f"skipped: {skipped[0]}" if skipped and k is None else num(k) + errors(P, "pg_writes"),
              rx(r), "≥ 1.0x", met(None if r is None else r >= 1)))
if len(rounds) > 1:
    a, b = values(P, "pg_writes", tput), values(E, "empty_writes", tput)
    each_r = [f"{a[i] / b[i]:.2f}x" for i in rounds if i in a and b.get(i)]
    if each_r:
        per_round.append(f"- PostgreSQL writes: {', '.join(each_r)}")

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
n_rounds = len(rounds)
print(f"Machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}. "
      f"kvstore {config['kvstore']} (3 nodes on redb, fsync on) against etcd {config.get('etcd', '3.4')} (3 members, "
      f"its defaults), all on loopback, the same generator (kvbench).\n")
print(f"Sizes (SCALE={config['scale']}): N = {n:,} keys of {value} B, preloaded "
      f"{config['preload_batch']} keys a transaction; {big:,} keys of {size_label(big_value)} "
      f"over {config['big_conns']} connections; otherwise {config['conns']} connections and "
      f"{value}-byte values; the empty store's writes over {config['empty_keys']:,} keys; "
      f"runs of {config['duration']} after {config['warmup']} of warm-up; median of "
      f"{n_rounds} round{'s' if n_rounds != 1 else ''}.\n")
print("| # | scenario | etcd 3 | kvstore 3 | kvstore vs etcd | goal | met |")
print("|---|---|---|---|---|---|---|")
for row in table:
    print("| " + " | ".join(str(c) for c in row) + " |")
if per_round:
    print("\nEach round's ratio, in round order:")
    print("\n".join(per_round))
