"""Prints `make bench` results as Markdown tables with kvstore/etcd ratios: the main
workload, then listing and compare-and-set (when measured), then the large-value
workload (3-node systems, one row per value size).

Each system ran once per round; a cell is the median over the rounds, and a ratio is
the median kvstore figure over the median etcd figure. The rounds' own ratios (each
round's kvstore run against the same round's etcd run) follow the main table.
"""
import json
import os
import platform
import statistics
import sys

path, conns, value, duration, large_conns, large_keys = sys.argv[1:7]
list_page, cas_keys = (sys.argv[7:9] + ["100", "100"][len(sys.argv[7:9]):])
runs = {}  # (name, kind) -> [report, ...] in round order, main workload
large = {}  # (name, kind, value size) -> [report, ...], large values
extra = {}  # (name, "list" or "cas") -> [report, ...], main workload
for line in open(path):
    r = json.loads(line)
    kind = "writes" if r["writes"] == 1 else "reads"
    if r.get("op", "rw") in ("list", "cas"):
        extra.setdefault((r["name"], r["op"]), []).append(r)
    elif r.get("workload", "main") == "large":
        large.setdefault((r["name"], kind, r["value_size"]), []).append(r)
    else:
        runs.setdefault((r["name"], kind), []).append(r)
rounds = max((r["round"] for rs in runs.values() for r in rs), default=0)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def throughput(name, kind):
    return median([r["throughput"] for r in runs.get((name, kind), [])])


def cell(name, kind):
    rs = runs.get((name, kind))
    if not rs:
        return "-", "-"
    errors = sum(sum(r["errors"].values()) for r in rs)
    note = f" ({errors} errors in all rounds)" if errors else ""
    p99 = median([r["latency_ms"]["p99"] for r in rs])
    return f"{throughput(name, kind):,.0f}{note}", f"{p99:.1f}"


def cpu_per_write(name):
    """CPU time (servers and generator together) per successful write, warm-up included."""
    def one(r):
        if not r.get("ok_all") or "server_cpu_s" not in r:
            return None
        return (r["server_cpu_s"] + r["generator_cpu_s"]) / r["ok_all"] * 1e6
    cpu = median([one(r) for r in runs.get((name, "writes"), [])])
    return "-" if cpu is None else f"{cpu:.0f}"


def baseline(name):
    return None if name.startswith("etcd") else f"etcd {name.split()[1]}"


def ratio(name, kind):
    base = baseline(name)
    mine, theirs = throughput(name, kind), base and throughput(base, kind)
    return f"{mine / theirs:.2f}x" if mine and theirs else "-"


def per_round(name, kind):
    base = baseline(name)
    mine = {r["round"]: r["throughput"] for r in runs.get((name, kind), [])}
    theirs = {r["round"]: r["throughput"] for r in runs.get((base, kind), [])}
    return [f"{mine[i] / theirs[i]:.2f}x" for i in sorted(mine) if i in theirs and theirs[i]]


cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; "
      f"{conns} connections, {value}-byte values, {duration} per run, fsync on, all on loopback; "
      f"median of {rounds} round{'s' if rounds != 1 else ''}.\n")
print("| system | writes/s | write p99 ms | CPU µs/write | reads/s (linearizable) | read p99 ms | writes vs etcd | reads vs etcd |")
print("|---|---|---|---|---|---|---|---|")
names = ["etcd 1", "kvstore 1 redb", "etcd 3", "kvstore 3 redb", "kvstore 3 postgres"]
for name in names:
    if not any((name, kind) in runs for kind in ("writes", "reads")):
        continue
    w, wp = cell(name, "writes")
    r, rp = cell(name, "reads")
    print(f"| {name} | {w} | {wp} | {cpu_per_write(name)} | {r} | {rp} | "
          f"{ratio(name, 'writes')} | {ratio(name, 'reads')} |")
lines = []
for name in names:
    if baseline(name) is None:
        continue
    for kind in ("writes", "reads"):
        each = per_round(name, kind)
        if len(each) > 1:
            lines.append(f"- {name} {kind}: {', '.join(each)}")
if lines:
    print("\nEach round's ratio to etcd, in round order:")
    print("\n".join(lines))


def extra_cells(name, op):
    """Throughput with any errors, p99, and for `cas` the conflicts' share of attempts."""
    rs = extra.get((name, op))
    if not rs:
        return None, "-", "-", "-"
    errors = {}
    for r in rs:
        for code, n in r["errors"].items():
            errors[code] = errors.get(code, 0) + n
    note = f" ({', '.join(f'{n} {c}' for c, n in sorted(errors.items()))})" if errors else ""
    ops = median([r["throughput"] for r in rs])
    p99 = median([r["latency_ms"]["p99"] for r in rs])
    conflicts = median([r.get("conflict_rate") for r in rs])
    conflicts = "-" if conflicts is None else f"{conflicts * 100:.1f}%"
    return ops, f"{ops:,.0f}{note}", f"{p99:.1f}", conflicts


if extra:
    print(f"\nListing and compare-and-set, after the writes and reads above on the same servers: "
          f"`list` reads pages of {list_page} pairs of the keys written (kvstore `GET /kv?prefix=`, "
          f"etcd `/v3/kv/range` with `range_end`); `cas` reads one of {cas_keys} keys (a counter) and "
          f"writes it plus one if its revision is unchanged, retrying on a conflict (kvstore `If-Match`, "
          f"etcd `/v3/kv/txn` on `mod_revision`), a success timed from its first read; conflicts are "
          f"the share of attempts that found the key changed. "
          f"Median of {rounds} round{'s' if rounds != 1 else ''}.\n")
    print("| system | list pages/s | list p99 ms | CAS/s | CAS p99 ms | CAS conflicts | list vs etcd | CAS vs etcd |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        l_ops, l, lp, _ = extra_cells(name, "list")
        c_ops, c, cp, conflicts = extra_cells(name, "cas")
        if l_ops is None and c_ops is None:
            continue
        ratios = []
        for op, mine in (("list", l_ops), ("cas", c_ops)):
            base = baseline(name)
            theirs = base and extra_cells(base, op)[0]
            ratios.append(f"{mine / theirs:.2f}x" if mine and theirs else "-")
        print(f"| {name} | {l} | {lp} | {c} | {cp} | {conflicts} | {ratios[0]} | {ratios[1]} |")


def size_label(size):
    for unit, factor in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def large_cell(name, kind, size):
    rs = large.get((name, kind, size))
    if not rs:
        return None, "-", "-"
    errors = {}
    for r in rs:
        for code, n in r["errors"].items():
            errors[code] = errors.get(code, 0) + n
    note = f" ({', '.join(f'{n} {c}' for c, n in sorted(errors.items()))})" if errors else ""
    ops = median([r["throughput"] for r in rs])
    p99 = median([r["latency_ms"]["p99"] for r in rs])
    return ops, f"{ops:,.0f} ({ops * size / (1 << 20):,.0f} MiB/s){note}", f"{p99:.0f}"


if large:
    sizes = sorted({size for (_, _, size) in large})
    print(f"\nLarge values: {large_conns} connections, {large_keys} keys (reads find values "
          f"written), otherwise as above; median of {rounds} round{'s' if rounds != 1 else ''}.\n")
    print("| system | value | writes/s | write p99 ms | reads/s (linearizable) | read p99 ms | writes vs etcd | reads vs etcd |")
    print("|---|---|---|---|---|---|---|---|")
    for size in sizes:
        for name in ["etcd 3", "kvstore 3 redb"]:
            w_ops, w, wp = large_cell(name, "writes", size)
            r_ops, r, rp = large_cell(name, "reads", size)
            if w_ops is None and r_ops is None:
                continue
            ratios = []
            for kind, mine in (("writes", w_ops), ("reads", r_ops)):
                base = baseline(name)
                theirs = base and large_cell(base, kind, size)[0]
                ratios.append(f"{mine / theirs:.2f}x" if mine and theirs else "-")
            print(f"| {name} | {size_label(size)} | {w} | {wp} | {r} | {rp} | {ratios[0]} | {ratios[1]} |")
