"""Churn the IPv4 neighbor table of a test namespace at full speed.

Adds, replaces and deletes neighbor entries on the named interfaces of
one network namespace, through a single ``ip -n NS -force -batch -``
process, until ``--operations`` commands are sent, ``--seconds`` pass or
SIGTERM arrives, whichever comes first. SIGTERM lets a caller run the
churn for as long as its own steps take, with both limits as a bound. It
is meant for namespaces that a test created:
``--netns`` is required, so the caller's own namespace is never touched,
and every address comes from ``--prefix``, which must lie inside
198.18.0.0/15, the range reserved for benchmark networks (RFC 2544).

At most ``--max-alive`` entries exist at once, because the kernel's
gc_thresh3 (1024 by default) limits the IPv4 neighbors of all namespaces
together. Commands on an interface that does not exist are skipped by
``ip -force``, but ip exits on any error the kernel returns for a
neighbor command (ipneigh_modify() in iproute2 calls exit(2)), such as
deleting an entry the kernel has flushed. churn then starts a new ip;
the commands still in the pipe are lost, which is fine for churn.

Prints one JSON line when done: ``operations`` (commands written),
``adds``, ``replaces``, ``deletes``, ``seconds``, ``ip_restarts``,
``ip_status`` (the exit status of the last ip, non-zero when any of its
commands failed) and ``stopped_by`` (``operations``, ``seconds`` or
``signal``). It exits 0 after SIGTERM too.

    python tests/tools/churn.py --netns nbt123h0 --iface d0 --iface d2 \\
        --operations 20000 --seconds 5 --max-alive 240 --prefix 198.19.0.0/16
"""

import argparse
import ipaddress
import json
import os
import random
import signal
import subprocess
import sys
import time

BENCHMARK_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
NETNS_RUN_DIR = "/run/netns"
CHUNK_LINES = 256
MAX_OPERATIONS = 1_000_000
MAX_SECONDS = 600.0
# States an entry can be given by hand that keep its MAC. REACHABLE decays
# to STALE on the kernel's timer, which adds changes the kernel makes itself.
STATES = ("permanent", "noarp", "stale", "reachable")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--netns", required=True, help="network namespace (from 'ip netns list') to churn")
    parser.add_argument("--iface", action="append", required=True, help="interface to churn; repeat for more")
    parser.add_argument("--operations", type=int, default=20_000,
                        help=f"commands to send, at most {MAX_OPERATIONS} (default: 20000)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help=f"time limit in seconds, at most {MAX_SECONDS:.0f} (default: 5)")
    parser.add_argument("--max-alive", type=int, default=240,
                        help="entries that may exist at once, over all interfaces (default: 240)")
    parser.add_argument("--prefix", default="198.19.0.0/16",
                        help="addresses to use, inside 198.18.0.0/15 (default: 198.19.0.0/16)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)

    if not os.path.exists(os.path.join(NETNS_RUN_DIR, args.netns)) or "/" in args.netns:
        parser.error(f"network namespace {args.netns!r} not found; create it with 'ip netns add'")
    prefix = ipaddress.IPv4Network(args.prefix, strict=False)
    if not prefix.subnet_of(BENCHMARK_RANGE):
        parser.error(f"invalid --prefix {args.prefix}: it must lie inside {BENCHMARK_RANGE}")
    if not 0 < args.operations <= MAX_OPERATIONS:
        parser.error(f"invalid --operations {args.operations}: give 1 to {MAX_OPERATIONS}")
    if not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"invalid --seconds {args.seconds}: give more than 0 and at most {MAX_SECONDS:.0f}")
    if not 0 < args.max_alive <= min(prefix.num_addresses - 2, 600):
        parser.error(f"invalid --max-alive {args.max_alive}: give 1 to 600, and at most the prefix's host count")
    args.prefix = prefix
    return args


def random_mac(rng):
    """Return a random locally administered unicast MAC as text."""
    octets = [0x02] + [rng.randrange(256) for _ in range(5)]
    return ":".join(f"{octet:02x}" for octet in octets)


class IpBatch:
    """An ``ip -n NS -force -batch -`` process, started again whenever it exits."""

    def __init__(self, netns_name):
        self.argv = ["ip", "-n", netns_name, "-force", "-batch", "-"]
        self.restarts = 0
        self.process = self._spawn()

    def _spawn(self):
        return subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, text=True)

    def send(self, text):
        """Write ``text`` to ip; return False when ip had exited and was started again."""
        if self.process.poll() is None:
            try:
                self.process.stdin.write(text)
                self.process.stdin.flush()
                return True
            except BrokenPipeError:
                pass
        self._restart()
        return False

    def _restart(self):
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        self.process.wait(timeout=60)
        self.restarts += 1
        self.process = self._spawn()

    def close(self):
        """Close ip's input, wait for it and return its exit status."""
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        return self.process.wait(timeout=60)


class Churn:
    """The pool of (interface, address) keys and the entries churn believes exist."""

    def __init__(self, ifaces, prefix, max_alive, rng):
        hosts = prefix.hosts()
        self.keys = [(ifaces[i % len(ifaces)], str(next(hosts))) for i in range(max_alive)]
        self.alive = set()
        self.rng = rng
        self.counts = {"adds": 0, "replaces": 0, "deletes": 0}

    def next_command(self):
        """Return one ``neigh`` command for ip -batch and record its effect."""
        key = self.rng.choice(self.keys)
        dev, address = key
        if key in self.alive and self.rng.random() < 0.4:
            self.alive.discard(key)
            self.counts["deletes"] += 1
            return f"neigh del {address} dev {dev}"
        self.counts["replaces" if key in self.alive else "adds"] += 1
        self.alive.add(key)
        state = self.rng.choice(STATES)
        return f"neigh replace {address} dev {dev} lladdr {random_mac(self.rng)} nud {state}"


def main(argv=None):
    args = parse_args(argv)
    churn = Churn(args.iface, args.prefix, args.max_alive, random.Random(args.seed))
    # The handler only records the signal, so the chunk being written is
    # finished and ip still runs the commands it has read.
    stop_signals = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stop_signals.append(signum))
    ip = IpBatch(args.netns)
    started = time.monotonic()
    operations = 0
    try:
        while not stop_signals and operations < args.operations and time.monotonic() - started < args.seconds:
            count = min(CHUNK_LINES, args.operations - operations)
            if not ip.send("".join(churn.next_command() + "\n" for _ in range(count))):
                # Which commands the old ip ran is unknown; replace works
                # either way, and deletes wait until entries are added again.
                churn.alive.clear()
            operations += count
    finally:
        ip_status = ip.close()
    seconds = time.monotonic() - started
    if stop_signals:
        stopped_by = "signal"
    elif operations >= args.operations:
        stopped_by = "operations"
    else:
        stopped_by = "seconds"
    print(json.dumps({"operations": operations, **churn.counts, "seconds": round(seconds, 3),
                      "ip_restarts": ip.restarts, "ip_status": ip_status, "stopped_by": stopped_by}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
