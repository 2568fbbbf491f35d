"""Prints `make bench` results as one Markdown table with kvstore/etcd ratios."""
import json
import platform
import os
import sys

path, conns, value, duration = sys.argv[1:5]
rows = {}
for line in open(path):
    r = json.loads(line)
    kind = "writes" if r["writes"] == 1 else "reads"
    rows.setdefault(r["name"], {})[kind] = r

def cell(r):
    if not r:
        return "-", "-"
    errors = sum(r["errors"].values())
    note = f" ({errors} errors)" if errors else ""
    return f'{r["throughput"]:,.0f}{note}', f'{r["latency_ms"]["p99"]:.1f}'

def cpu_per_write(r):
    """CPU time (servers and generator together) per successful write, warm-up included."""
    if not r or not r.get("ok_all") or "server_cpu_s" not in r:
        return "-"
    return f'{(r["server_cpu_s"] + r["generator_cpu_s"]) / r["ok_all"] * 1e6:.0f}'

def ratio(name, kind):
    members = name.split()[1]
    base = rows.get(f"etcd {members}", {}).get(kind)
    mine = rows.get(name, {}).get(kind)
    if not base or not mine or name.startswith("etcd"):
        return "-"
    return f'{mine["throughput"] / base["throughput"]:.2f}x'

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; "
      f"{conns} connections, {value}-byte values, {duration} per run, fsync on, all on loopback.\n")
print("| system | writes/s | write p99 ms | CPU µs/write | reads/s (linearizable) | read p99 ms | writes vs etcd | reads vs etcd |")
print("|---|---|---|---|---|---|---|---|")
for name in ["etcd 1", "kvstore 1 redb", "etcd 3", "kvstore 3 redb", "kvstore 3 postgres"]:
    if name not in rows:
        continue
    w, wp = cell(rows[name].get("writes"))
    r, rp = cell(rows[name].get("reads"))
    cpu_w = cpu_per_write(rows[name].get("writes"))
    print(f"| {name} | {w} | {wp} | {cpu_w} | {r} | {rp} | {ratio(name, 'writes')} | {ratio(name, 'reads')} |")
