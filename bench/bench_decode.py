#!/usr/bin/env python3
"""Compare the time to read a neighbor table: ip, pyroute2 and neighbpf.codec.

Run as root from the repository root:

    .venv/bin/python bench/bench_decode.py [--entries 800] [--runs 7]

The script creates a namespace with a unique name, puts ``--entries``
PERMANENT IPv4 neighbors on a veth link with one ``ip -batch`` call, and
then measures, side by side and in turn, each method reading the whole
table:

- ``ip -j neigh show``: wall time of the command, including process start
  and JSON output;
- pyroute2 ``IPRoute().get_neighbours()``: the call on an open socket;
- a raw RTM_GETNEIGH dump on a netlink socket decoded with
  ``codec.iter_messages``: from send() to NLMSG_DONE, and the decode step
  alone on the same datagrams.

It prints one table with the median of ``--runs`` runs and the ratio to
``ip``, then removes the namespace, also on failure. IPv6 is disabled in
the namespace so that every method reads the same IPv4 entries.

Every neighbor here is PERMANENT. The host's net.ipv4.neigh.default.gc_thresh3
(1024 by default) is shared by all namespaces, so keep --entries below it
on a shared machine and raise it only in a VM or another disposable host.
"""

import argparse
import collections
import ipaddress
import json
import logging
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neighbpf import codec, netns  # noqa: E402

log = logging.getLogger("bench_decode")

BASE_ADDRESS = ipaddress.IPv4Address("198.18.0.0")
# 198.18.0.0/15 has 131072 addresses; .0 and the local .1 are not used.
MAX_ENTRIES = 131072 - 2
RECV_SIZE = 1 << 20


def run(*argv, input_text=None):
    result = subprocess.run(argv, input=input_text, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed with status {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def neighbor_address(index):
    return BASE_ADDRESS + 2 + index


def build_namespace(ns, entries):
    run("ip", "netns", "add", ns)
    run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
    run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
    run("ip", "-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    run("ip", "-n", ns, "addr", "add", "198.18.0.1/15", "dev", "v0")
    run("ip", "-n", ns, "link", "set", "v0", "up")
    run("ip", "-n", ns, "link", "set", "v1", "up")
    lines = []
    for index in range(entries):
        mac = (0x02 << 40) | index
        mac_text = ":".join(f"{(mac >> shift) & 0xFF:02x}" for shift in range(40, -8, -8))
        lines.append(f"neigh add {neighbor_address(index)} lladdr {mac_text} dev v0 nud permanent\n")
    started = time.perf_counter()
    run("ip", "-n", ns, "-batch", "-", input_text="".join(lines))
    log.info("added %d neighbors in %.2f s", entries, time.perf_counter() - started)


def measure_ip(ns):
    output = run("ip", "-n", ns, "-j", "neigh", "show")
    return len(json.loads(output))


def measure_pyroute2(ipr):
    return len(ipr.get_neighbours(family=socket.AF_INET))


class RawDumper:
    """One netlink socket in the namespace that dumps and decodes the IPv4 neighbor table."""

    def __init__(self, ns):
        with netns.entered(ns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.sock.bind((0, 0))
        self.seq = 0
        self.datagrams = []

    def dump(self):
        """Dump the table, decode every datagram and return the number of neighbor records."""
        self.seq += 1
        counters = collections.Counter()
        self.datagrams = []
        count = 0
        self.sock.send(codec.encode_neigh_dump_request(self.seq))
        buffer = bytearray(RECV_SIZE)
        view = memoryview(buffer)
        while True:
            size = self.sock.recv_into(buffer)
            data = view[:size]
            self.datagrams.append(bytes(data))
            for message in codec.iter_messages(data, counters):
                if message.__class__ is codec.NeighMessage:
                    count += 1
                elif message.__class__ is codec.DoneMessage:
                    if counters:
                        raise RuntimeError(f"dump had malformed messages: {dict(counters)}")
                    return count
                elif message.__class__ is codec.ErrorMessage:
                    raise RuntimeError(f"dump failed with errno {message.error}: {message.extack}")

    def decode_only(self):
        """Decode the datagrams of the last dump again; return the number of neighbor records."""
        counters = collections.Counter()
        count = 0
        for data in self.datagrams:
            for message in codec.iter_messages(data, counters):
                if message.__class__ is codec.NeighMessage:
                    count += 1
        return count

    def close(self):
        self.sock.close()


def time_runs(function, runs):
    """Call function ``runs`` times; return the median seconds, every duration and the last result."""
    durations = []
    result = None
    for _ in range(runs):
        started = time.perf_counter()
        result = function()
        durations.append(time.perf_counter() - started)
    return statistics.median(durations), durations, result


def print_table(rows, entries, runs):
    ip_median = rows[0][1]
    print(f"neighbors: {entries}, runs per method: {runs} (median shown)")
    print(f"{'method':<36} {'records':>8} {'median ms':>10} {'us/record':>10} {'ratio to ip':>12}")
    for name, median_s, records in rows:
        per_record_us = median_s / records * 1e6 if records else float("nan")
        print(f"{name:<36} {records:>8} {median_s * 1e3:>10.2f} {per_record_us:>10.2f} {median_s / ip_median:>12.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--entries",
        type=int,
        default=800,
        help="number of PERMANENT neighbors to create (default: %(default)s, below the kernel's default gc_thresh3 of 1024)",
    )
    parser.add_argument("--runs", type=int, default=7, help="runs per method; the median is shown (default: %(default)s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if os.geteuid() != 0:
        sys.exit("bench_decode: must run as root to create a network namespace; retry with sudo")
    if not 1 <= args.entries <= MAX_ENTRIES:
        sys.exit(f"bench_decode: invalid --entries {args.entries}; use 1 to {MAX_ENTRIES} (the size of 198.18.0.0/15)")
    if args.runs < 1:
        sys.exit(f"bench_decode: invalid --runs {args.runs}; use 1 or more")

    from pyroute2 import IPRoute

    ns = f"nbpfbench-{os.getpid()}-{secrets.token_hex(3)}"
    ipr = None
    dumper = None
    try:
        build_namespace(ns, args.entries)
        ipr = IPRoute(netns=ns)
        dumper = RawDumper(ns)
        # One warm-up call each, so that imports and first allocations are
        # not measured.
        measure_ip(ns)
        measure_pyroute2(ipr)
        dumper.dump()

        rows = []
        methods = [
            ("ip -j neigh show", lambda: measure_ip(ns)),
            ("pyroute2 IPRoute().get_neighbours()", lambda: measure_pyroute2(ipr)),
            ("raw dump + iter_messages", dumper.dump),
            ("  iter_messages alone", dumper.decode_only),
        ]
        for name, function in methods:
            median_s, durations, records = time_runs(function, args.runs)
            log.info("%s: %s ms", name, ", ".join(f"{d * 1e3:.2f}" for d in durations))
            rows.append((name, median_s, records))
        print_table(rows, args.entries, args.runs)
    finally:
        if dumper is not None:
            dumper.close()
        if ipr is not None:
            ipr.close()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


if __name__ == "__main__":
    main()
