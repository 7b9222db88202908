#!/usr/bin/env python3
"""Time and memory of ``neighbpf sync --once`` beside ``ip -j neigh show``.

Run as root from the repository root:

    .venv/bin/python bench/bench_sync.py [--entries 20000] [--runs 5]

The script creates a namespace with a unique name and puts ``--entries``
PERMANENT IPv4 neighbors on a veth link with one ``ip -batch`` call.
PERMANENT entries are exempt from the kernel's neighbor garbage
collection and its gc_thresh3 limit, so a large table here does not
crowd out the neighbors of other namespaces. The script then runs, in
turn and ``--runs`` times each:

- ``ip -j neigh show``: the reference, reading and printing the table;
- ``neighbpf sync --once`` into an empty pin directory (every entry is
  written to the map);
- ``neighbpf sync --once`` over an up-to-date map (nothing is written);
- ``neighbpf sync --once`` after 10% of the MACs changed.

For each it reports the median wall time, the median peak RSS of the
process (from wait4), and for neighbpf the dump and mirror times it
prints with ``--json``. The namespace and pins are removed, also on
failure.
"""

import argparse
import ipaddress
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEIGHBPF = [sys.executable, "-m", "neighbpf.cli"]
FIRST_ADDRESS = ipaddress.IPv4Address("198.18.0.2")
MAX_ENTRIES = 131072 - 2


def run_with_rusage(argv):
    """Run ``argv`` and return (stdout, wall seconds, peak RSS MiB)."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    stdout = process.stdout.read()
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall_s = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed with status {process.returncode}: {stderr.decode().strip()}")
    return stdout.decode(), wall_s, usage.ru_maxrss / 1024


def neighbor_batch(entries, mac_byte):
    lines = []
    for index in range(entries):
        mac = f"02:{mac_byte:02x}:{(index >> 16) & 255:02x}:{(index >> 8) & 255:02x}:{index & 255:02x}:01"
        lines.append(f"neigh replace {FIRST_ADDRESS + index} lladdr {mac} dev v0 nud permanent\n")
    return "".join(lines)


def build_namespace(netns_name, entries):
    subprocess.run(["ip", "netns", "add", netns_name], check=True)
    subprocess.run(["ip", "-n", netns_name, "link", "add", "v0", "type", "veth", "peer", "name", "v1"], check=True)
    subprocess.run(["ip", "-n", netns_name, "link", "set", "v0", "up"], check=True)
    subprocess.run(["ip", "-n", netns_name, "addr", "add", "198.18.0.1/15", "dev", "v0"], check=True)
    subprocess.run(["ip", "-n", netns_name, "-batch", "-"], input=neighbor_batch(entries, 0), text=True, check=True)


def median_row(name, samples):
    walls = [s["wall_s"] for s in samples]
    rss = [s["rss_mib"] for s in samples]
    row = {"method": name, "wall_s": statistics.median(walls), "rss_mib": statistics.median(rss)}
    if "dump_seconds" in samples[0]:
        row["dump_s"] = statistics.median(s["dump_seconds"] for s in samples)
        row["mirror_s"] = statistics.median(s["mirror_seconds"] for s in samples)
    return row


def measure(args, netns_name, pin_root):
    ip_samples, cold, warm, changed = [], [], [], []
    max_entries = 1 << (args.entries - 1).bit_length()
    sync_argv = NEIGHBPF + ["sync", "--once", "--json", "--netns", netns_name, "--max-entries", str(max_entries)]
    for run in range(args.runs):
        _, wall_s, rss = run_with_rusage(["ip", "-n", netns_name, "-j", "neigh", "show"])
        ip_samples.append({"wall_s": wall_s, "rss_mib": rss})

        pin_dir = os.path.join(pin_root, f"r{run}")
        for samples in (cold, warm):
            stdout, wall_s, rss = run_with_rusage(sync_argv + ["--pin-dir", pin_dir])
            report = json.loads(stdout)
            assert report["entries"] == args.entries, report
            samples.append({"wall_s": wall_s, "rss_mib": rss, **report})

        changed_count = args.entries // 10
        subprocess.run(["ip", "-n", netns_name, "-batch", "-"], input=neighbor_batch(changed_count, run + 1),
                       text=True, check=True)
        stdout, wall_s, rss = run_with_rusage(sync_argv + ["--pin-dir", pin_dir])
        changed.append({"wall_s": wall_s, "rss_mib": rss, **json.loads(stdout)})
        shutil.rmtree(pin_dir)
    return [median_row("ip -j neigh show", ip_samples),
            median_row("neighbpf sync --once, empty map", cold),
            median_row("neighbpf sync --once, map up to date", warm),
            median_row("neighbpf sync --once, 10% changed", changed)]


def print_table(rows, entries, runs):
    reference = rows[0]
    print(f"{entries} PERMANENT neighbors, median of {runs} runs")
    print(f"{'method':40} {'wall s':>8} {'x ip':>6} {'dump s':>8} {'mirror s':>9} {'peak RSS MiB':>13}")
    for row in rows:
        dump = f"{row['dump_s']:.3f}" if "dump_s" in row else "-"
        mirror = f"{row['mirror_s']:.3f}" if "mirror_s" in row else "-"
        ratio = row["wall_s"] / reference["wall_s"]
        print(f"{row['method']:40} {row['wall_s']:8.3f} {ratio:6.2f} {dump:>8} {mirror:>9} {row['rss_mib']:13.1f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=20000, help="PERMANENT neighbors to create (default: 20000)")
    parser.add_argument("--runs", type=int, default=5, help="runs of each method; the median is reported (default: 5)")
    args = parser.parse_args()
    if not 1 <= args.entries <= MAX_ENTRIES:
        parser.error(f"invalid --entries {args.entries}; use 1 to {MAX_ENTRIES}")
    if args.runs < 1:
        parser.error(f"invalid --runs {args.runs}; use 1 or more")
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces and BPF); retry with sudo")

    tag = secrets.token_hex(3)
    netns_name = f"nbbench-sync-{tag}"
    pin_root = f"/sys/fs/bpf/nbbench-sync-{tag}"
    os.makedirs(pin_root, mode=0o700)
    try:
        build_namespace(netns_name, args.entries)
        rows = measure(args, netns_name, pin_root)
    finally:
        subprocess.run(["ip", "netns", "del", netns_name], capture_output=True)
        shutil.rmtree(pin_root, ignore_errors=True)
    print_table(rows, args.entries, args.runs)


if __name__ == "__main__":
    main()
