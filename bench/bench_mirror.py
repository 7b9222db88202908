"""Measure writing N neighbor entries to the pinned map: batched vs one bpf() call each.

    sudo .venv/bin/python bench/bench_mirror.py [--entries 60000] [--runs 5] [--json]

Both methods go through NeighMap.update_batch and NeighMap.delete_batch
on the same map; the single path is the fallback that kernels without
BPF_MAP_*_BATCH take. The times include building the ctypes arrays, as
the daemon pays that too. Each run starts from an empty map, and the
figures are medians over the runs. The map lives in a pin directory of its own
(/sys/fs/bpf/nbtbench<pid>) that is removed at the end. A BPF map is not
bound by the kernel's gc_thresh3, so N may exceed the neighbor limit.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from neighbpf.bpfmap import PinnedMaps, unpin_dir  # noqa: E402

NUD_REACHABLE = 0x02


def make_items(count):
    """Return ``count`` distinct entries with addresses in 198.18.0.0/15 on ifindexes 2..5."""
    items = []
    for index in range(count):
        dst4 = bytes([198, 18 + ((index >> 16) & 1), (index >> 8) & 0xFF, index & 0xFF])
        lladdr = bytes([0x02, 0, (index >> 16) & 0xFF, (index >> 8) & 0xFF, index & 0xFF, 1])
        items.append(((2 + index % 4, dst4), (lladdr, NUD_REACHABLE, 0)))
    return items


def time_call(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def run_method(neigh, items, batch_supported):
    """Write then delete ``items`` once; return (update_s, delete_s)."""
    neigh.batch_supported = batch_supported
    update_s, result = time_call(neigh.update_batch, items)
    if result.failed or result.written != len(items):
        raise RuntimeError(f"update wrote {result.written} of {len(items)} entries and "
                           f"{len(result.failed)} failed; the first failure is {result.failed[:1]}")
    keys = [key for key, _ in items]
    delete_s, deleted = time_call(neigh.delete_batch, keys)
    if deleted != len(items):
        raise RuntimeError(f"delete removed {deleted} of {len(items)} entries")
    return update_s, delete_s


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=60000, help="entries written per run (max 131072)")
    parser.add_argument("--runs", type=int, default=5, help="runs per method; medians are reported")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root to create BPF maps; run with sudo")
    if not 0 < args.entries <= 131072:
        parser.error(f"--entries {args.entries} is outside 1..131072 (two /16 networks)")

    items = make_items(args.entries)
    max_entries = 1 << (args.entries - 1).bit_length()
    pin_dir = f"/sys/fs/bpf/nbtbench{os.getpid()}"
    timings = {"batch": [], "single": []}
    maps = PinnedMaps.open(pin_dir, create=True, max_entries=max_entries)
    try:
        for run_index in range(args.runs):
            # Alternate the order so that neither method always runs first.
            order = ("batch", "single") if run_index % 2 == 0 else ("single", "batch")
            for method in order:
                timings[method].append(run_method(maps.neigh, items, method == "batch"))
    finally:
        maps.close()
        unpin_dir(pin_dir)

    summary = {"entries": args.entries, "runs": args.runs, "max_entries": max_entries}
    for method, samples in timings.items():
        summary[f"{method}_update_s"] = statistics.median(update_s for update_s, _ in samples)
        summary[f"{method}_delete_s"] = statistics.median(delete_s for _, delete_s in samples)
    summary["update_speedup"] = summary["single_update_s"] / summary["batch_update_s"]
    summary["delete_speedup"] = summary["single_delete_s"] / summary["batch_delete_s"]

    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{args.entries} entries, median of {args.runs} runs, map max_entries {max_entries}")
    print(f"{'':8} {'batch':>10} {'single':>10} {'single/batch':>13}")
    for operation in ("update", "delete"):
        batch_s = summary[f"batch_{operation}_s"]
        single_s = summary[f"single_{operation}_s"]
        print(f"{operation:8} {batch_s * 1000:8.1f}ms {single_s * 1000:8.1f}ms {single_s / batch_s:12.2f}x")
    print(f"{'':8} {args.entries / summary['batch_update_s']:8.0f}/s "
          f"{args.entries / summary['single_update_s']:8.0f}/s  (updates per second)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
