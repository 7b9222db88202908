"""Network namespace fixtures for integration tests.

Every namespace, veth pair and pin directory made here has a name built
from ``nbt``, the pid and a counter, so concurrent runs cannot collide,
and is removed on teardown even when the test fails. Addresses come from
198.18.0.0/15, the benchmarking range. Nothing here touches an interface
or a namespace it did not create.

    def test_x(netns_lab):
        client, server = netns_lab.add_netns("c"), netns_lab.add_netns("s")
        netns_lab.add_veth(client, "c0", server, "s0")
        netns_lab.add_addr(client, "c0", "198.18.0.1/24")
"""

import itertools
import json
import os
import shutil
import subprocess

import pytest

from neighbpf import netns
from neighbpf.bpfmap import unpin_dir

_counter = itertools.count()
IFNAMSIZ = 16


def unique_name(tag=""):
    """Return ``nbt<pid><tag><n>``, unique in this process and at most 15 characters."""
    name = f"nbt{os.getpid() % 100000}{tag}{next(_counter)}"
    if len(name) >= IFNAMSIZ:
        raise ValueError(f"name {name!r} is longer than {IFNAMSIZ - 1} characters; use a shorter tag")
    return name


def run(*argv, netns_name=None, check=True):
    """Run a command, inside ``netns_name`` through ``ip netns exec`` when given; return stdout."""
    if netns_name is not None:
        argv = ("ip", "netns", "exec", netns_name, *argv)
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and completed.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed with status {completed.returncode}: {completed.stderr.strip()}")
    return completed.stdout


def ip(*args, netns_name=None, check=True):
    """Run ``ip [-n NS] ARGS`` and return its stdout."""
    argv = ["ip"]
    if netns_name is not None:
        argv += ["-n", netns_name]
    return run(*argv, *args, check=check)


def ip_json(*args, netns_name=None):
    """Run ``ip -j [-n NS] ARGS`` and return the decoded JSON (a list)."""
    argv = ["-j"]
    if netns_name is not None:
        argv += ["-n", netns_name]
    output = run("ip", *argv, *args)
    return json.loads(output) if output.strip() else []


def call_in_netns(netns_name, function, *args, **kwargs):
    """Call ``function`` with the calling thread inside ``netns_name``.

    Sockets that ``function`` creates stay in that namespace afterwards.
    """
    with netns.entered(netns_name):
        return function(*args, **kwargs)


def read_snmp(netns_name, group="Ip"):
    """Return ``{counter: value}`` of one group of /proc/net/snmp in ``netns_name``.

    /proc/self/net follows the main thread's namespace, so the file is
    read through /proc/thread-self, which follows the calling thread.
    """
    with netns.entered(netns_name):
        with open("/proc/thread-self/net/snmp") as f:
            lines = [line.split() for line in f if line.startswith(group + ":")]
    header, values = lines[0][1:], lines[1][1:]
    return dict(zip(header, (int(v) for v in values)))


# Addresses of the topology that NetnsLab.add_routed() builds.
ROUTED_CLIENT_ADDR = "198.18.1.2"
ROUTED_ROUTER_CLIENT_SIDE = "198.18.1.1"
ROUTED_ROUTER_SERVER_SIDE = "198.18.2.1"
ROUTED_SERVER_ADDR = "198.18.2.2"


class NetnsLab:
    """Namespaces, links and pin directories of one test, removed by ``teardown()``."""

    def __init__(self):
        self.namespaces = []
        self.pin_dirs = []

    def add_netns(self, tag="n"):
        """Create a namespace with ``lo`` up and return its name."""
        name = unique_name(tag)
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        ip("link", "set", "lo", "up", netns_name=name)
        return name

    def add_veth(self, netns_a, name_a, netns_b, name_b):
        """Create a veth pair ``name_a`` in ``netns_a`` and ``name_b`` in ``netns_b``, both up."""
        ip("link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", netns_b, netns_name=netns_a)
        ip("link", "set", name_a, "up", netns_name=netns_a)
        ip("link", "set", name_b, "up", netns_name=netns_b)

    def add_addr(self, netns_name, ifname, cidr):
        """Add ``cidr`` (an address in 198.18.0.0/15 with its prefix length) to ``ifname``."""
        ip("addr", "add", cidr, "dev", ifname, netns_name=netns_name)

    def sysctl(self, netns_name, key, value):
        """Set a per-namespace sysctl such as ``net.ipv4.ip_forward`` inside ``netns_name``."""
        if not key.startswith("net."):
            raise ValueError(f"sysctl {key} is not per network namespace; the lab changes only net.* keys")
        run("sysctl", "-qw", f"{key}={value}", netns_name=netns_name)

    def add_routed(self, server_addrs=(ROUTED_SERVER_ADDR,)):
        """Build client (c0) -- (r0) router (r1) -- (s0) server with IPv4 forwarding on the router.

        The client is ``ROUTED_CLIENT_ADDR``, the server owns ``server_addrs``,
        and each host routes through the router. Returns the namespace names
        as ``(client, router, server)``.
        """
        client = self.add_netns("c")
        router = self.add_netns("r")
        server = self.add_netns("s")
        self.add_veth(client, "c0", router, "r0")
        self.add_veth(router, "r1", server, "s0")
        self.add_addr(client, "c0", f"{ROUTED_CLIENT_ADDR}/24")
        self.add_addr(router, "r0", f"{ROUTED_ROUTER_CLIENT_SIDE}/24")
        self.add_addr(router, "r1", f"{ROUTED_ROUTER_SERVER_SIDE}/24")
        for address in server_addrs:
            self.add_addr(server, "s0", f"{address}/24")
        ip("route", "add", "default", "via", ROUTED_ROUTER_CLIENT_SIDE, netns_name=client)
        ip("route", "add", "default", "via", ROUTED_ROUTER_SERVER_SIDE, netns_name=server)
        self.sysctl(router, "net.ipv4.ip_forward", 1)
        return client, router, server

    def ethtool(self, netns_name, *args):
        """Run ``ethtool ARGS`` inside ``netns_name``."""
        run("ethtool", *args, netns_name=netns_name)

    def add_pin_dir(self, tag="p"):
        """Return a fresh pin directory path under /sys/fs/bpf; it is unpinned on teardown."""
        path = os.path.join("/sys/fs/bpf", unique_name(tag))
        self.pin_dirs.append(path)
        return path

    def teardown(self):
        """Delete every namespace (with its links) and pin directory, reporting the first failure."""
        failures = []
        for name in reversed(self.namespaces):
            completed = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True, timeout=30)
            if completed.returncode != 0:
                failures.append(f"ip netns del {name}: {completed.stderr.strip()}")
        self.namespaces.clear()
        for path in self.pin_dirs:
            unpin_dir(path)
            if os.path.exists(path):
                failures.append(f"pin directory {path} still exists")
        self.pin_dirs.clear()
        if failures:
            raise RuntimeError("; ".join(failures))


def require_root():
    """Skip the calling test unless running as root with ip and ethtool installed."""
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, BPF maps and XDP")
    for tool in ("ip", "ethtool"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (Debian packages iproute2 and ethtool)")


@pytest.fixture
def netns_lab():
    """A NetnsLab that is torn down after the test, also when it fails."""
    require_root()
    lab = NetnsLab()
    try:
        yield lab
    finally:
        lab.teardown()


@pytest.fixture
def pin_dir(netns_lab):
    """A unique pin directory under /sys/fs/bpf, removed after the test."""
    return netns_lab.add_pin_dir()
