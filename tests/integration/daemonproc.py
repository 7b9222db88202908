"""A ``neighbpf run`` subprocess and the checks the resilience tests share.

The daemon runs as ``python -m neighbpf.cli run`` so that tests can pause
it with SIGSTOP, kill it with SIGKILL and restart it as an operator
would. Its stderr goes to a file, never to a pipe, because a daemon
that logs into a pipe no one reads blocks once the pipe buffer is full.

    def test_x(host_peer):
        daemon = DaemonProcess(host_peer.host, host_peer.pin_dir, "--no-xdp")
        daemon.start()
        ...
        assert verify_within(host_peer.host, host_peer.pin_dir).returncode == 0
"""

import ipaddress
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

import pytest

from neighbpf.bpfmap import PinnedMaps
from neighbpf.daemon import stats_path
from nslab import ip, netns_lab  # noqa: F401 (fixture)

NEIGHBPF = [sys.executable, "-m", "neighbpf.cli"]
HOST_ADDR = "198.18.7.1"
PEER_ADDRS = [f"198.18.7.{i}" for i in range(2, 8)]
VALID_STATES = {"PERMANENT", "NOARP", "REACHABLE", "STALE", "DELAY", "PROBE"}


def neighbpf(*args, timeout_s=60):
    """Run ``neighbpf ARGS`` and return the CompletedProcess (text, output captured)."""
    return subprocess.run(NEIGHBPF + list(args), capture_output=True, text=True, timeout=timeout_s)


def stats_json(pin_dir):
    """Return the output of ``neighbpf stats -j`` as a dict; fail the test on a non-zero exit."""
    result = neighbpf("stats", "-j", "--pin-dir", pin_dir)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def verify_within(netns_name, pin_dir, timeout_s=2.0, iface_names=()):
    """Run ``neighbpf verify`` until it exits 0 or ``timeout_s`` has passed.

    Returns the last CompletedProcess, so that a failing assert shows the
    differences that verify printed.
    """
    args = ["verify", "--netns", netns_name, "--pin-dir", pin_dir]
    for name in iface_names:
        args += ["--iface", name]
    deadline = time.monotonic() + timeout_s
    while True:
        result = neighbpf(*args)
        if result.returncode == 0 or time.monotonic() >= deadline:
            return result
        time.sleep(0.05)


def read_neigh_map(pin_dir):
    """Return ``{(ifindex, dst4): (lladdr, nud_state, ntf_flags)}`` of the pinned neigh4 map."""
    with PinnedMaps.open(pin_dir) as maps:
        return maps.neigh.read_all()


def expected_entries(netns_name):
    """Return the entries the map must hold, computed from ``ip -j -4 neigh show nud all``.

    This applies the ingest rules independently of neighbpf's table:
    ``{(ifindex, dst4): lladdr}`` for unicast, non-proxy entries in a
    NUD_VALID state with a non-zero 6-byte MAC.
    """
    indexes = {link["ifname"]: link["ifindex"] for link in json.loads(ip("-j", "link", "show", netns_name=netns_name))}
    rows = json.loads(ip("-j", "-4", "neigh", "show", "nud", "all", netns_name=netns_name) or "[]")
    expected = {}
    for row in rows:
        address = ipaddress.IPv4Address(row["dst"])
        lladdr = row.get("lladdr", "")
        if address.is_multicast or address == ipaddress.IPv4Address("255.255.255.255"):
            continue
        if len(lladdr.split(":")) != 6 or lladdr == "00:00:00:00:00:00":
            continue
        if not VALID_STATES & set(row.get("state", [])):
            continue
        expected[(indexes[row["dev"]], address.packed)] = bytes.fromhex(lladdr.replace(":", ""))
    return expected


def map_lladdrs(pin_dir):
    """Return ``{(ifindex, dst4): lladdr}`` of the pinned neigh4 map, comparable with expected_entries()."""
    return {key: value[0] for key, value in read_neigh_map(pin_dir).items()}


def ifindex_of(netns_name, ifname):
    """Return the ifindex of ``ifname`` inside ``netns_name``."""
    return json.loads(ip("-j", "link", "show", "dev", ifname, netns_name=netns_name))[0]["ifindex"]


def ip_batch(netns_name, lines, force=False):
    """Feed ``lines`` (ip commands without the leading ``ip``) to ``ip -n NS -batch -``."""
    argv = ["ip", "-n", netns_name] + (["-force"] if force else []) + ["-batch", "-"]
    completed = subprocess.run(argv, input="".join(line + "\n" for line in lines), capture_output=True,
                               text=True, timeout=60)
    if not force and completed.returncode != 0:
        raise RuntimeError(f"ip -batch in {netns_name} failed: {completed.stderr.strip()[:500]}")
    return completed


def wait_for(predicate, timeout_s, interval_s=0.05):
    """Call ``predicate`` until it returns a true value or ``timeout_s`` passes; return its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval_s)


class DaemonProcess:
    """One ``neighbpf run`` subprocess for the namespace ``netns_name``.

    ``args`` are added after ``run --netns NS --pin-dir DIR``. ``close()``
    stops the process (SIGCONT, then SIGTERM, then SIGKILL after 10 s) and
    is safe to call twice.
    """

    def __init__(self, netns_name, pin_dir, *args):
        self.argv = NEIGHBPF + ["run", "--netns", netns_name, "--pin-dir", pin_dir] + list(args)
        self.pin_dir = pin_dir
        self.process = None
        self._stderr = tempfile.TemporaryFile(mode="w+")

    @property
    def pid(self):
        return self.process.pid

    def start(self, ready_timeout_s=20.0):
        """Start the daemon and wait until it writes its first counters."""
        self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=self._stderr)
        self.wait_ready(ready_timeout_s)
        return self

    def wait_ready(self, timeout_s):
        """Wait until the stats file names this process, which the daemon writes after its first dump."""
        def written():
            if self.process.poll() is not None:
                pytest.fail(f"neighbpf run exited with status {self.process.returncode}: {self.stderr()[-2000:]}")
            try:
                with open(stats_path(self.pin_dir)) as f:
                    return json.load(f).get("pid") == self.process.pid
            except (FileNotFoundError, json.JSONDecodeError):
                return False

        if not wait_for(written, timeout_s):
            pytest.fail(f"neighbpf run wrote no counters within {timeout_s} s: {self.stderr()[-2000:]}")

    def wait_counter(self, name, minimum, timeout_s):
        """Wait until the counter ``name`` in the stats file reaches ``minimum``; return its value."""
        def value():
            try:
                with open(stats_path(self.pin_dir)) as f:
                    stats = json.load(f)
            except (FileNotFoundError, json.JSONDecodeError):
                return 0
            if stats.get("pid") != self.process.pid:
                return 0
            return stats["counters"].get(name, 0)

        wait_for(lambda: value() >= minimum, timeout_s)
        return value()

    def signal(self, signum):
        self.process.send_signal(signum)

    def kill(self):
        """SIGKILL the daemon and reap it; nothing of its own cleanup runs."""
        self.process.kill()
        self.process.wait(timeout=10)

    def terminate(self, timeout_s=20.0):
        """SIGTERM the daemon and return its exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def stderr(self):
        """Return what the daemon has logged so far."""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read()

    def close(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._stderr.close()


class HostPeer(NamedTuple):
    """Two namespaces joined by veth ``d0`` (host) -- ``d1`` (peer), and a pin directory."""

    host: str
    peer: str
    pin_dir: str
    lab: object


@pytest.fixture
def host_peer(netns_lab):
    """``host`` (the mirrored namespace, d0 198.18.7.1/24) and ``peer`` (d1, the PEER_ADDRS).

    The peer replies to ARP requests for its addresses, so the host can
    learn entries for real. Everything is removed after the test.
    """
    host = netns_lab.add_netns("h")
    peer = netns_lab.add_netns("p")
    netns_lab.add_veth(host, "d0", peer, "d1")
    netns_lab.add_addr(host, "d0", f"{HOST_ADDR}/24")
    for address in PEER_ADDRS:
        netns_lab.add_addr(peer, "d1", f"{address}/24")
    return HostPeer(host, peer, netns_lab.add_pin_dir(), netns_lab)


@pytest.fixture
def daemons(netns_lab):
    """A list that tests append DaemonProcess objects to; each is closed after the test.

    It depends on ``netns_lab`` so that the daemons stop before their
    namespaces and pins are removed.
    """
    started = []
    try:
        yield started
    finally:
        for daemon in started:
            daemon.close()


def learn_by_ping(netns_name, addresses):
    """Ping each address once from ``netns_name`` so the kernel learns it by ARP."""
    for address in addresses:
        subprocess.run(["ip", "netns", "exec", netns_name, "ping", "-c", "1", "-W", "1", address],
                       capture_output=True, check=False, timeout=10)


def environ_int(name, default):
    """Return the integer in environment variable ``name``, or ``default`` when unset."""
    text = os.environ.get(name, "")
    return int(text) if text.strip() else default
