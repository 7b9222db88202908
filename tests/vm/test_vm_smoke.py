"""Smoke tests for the VM runner: real namespaces and neighbor tables.

The integration test runs on any kernel as root. The vm test raises the
global neighbor limit ``net.ipv4.neigh.default.gc_thresh3``, which every
namespace shares, so it runs only inside the test VM.
"""

import ipaddress
import json
import os
import secrets
import subprocess

import pytest
from pyroute2 import IPRoute

from neighbpf import netns

GC_THRESH3 = "/proc/sys/net/ipv4/neigh/default/gc_thresh3"
# 198.18.0.0/15 is reserved for benchmarking (RFC 2544), so no real host
# uses it.
BENCH_NET = ipaddress.ip_network("198.18.0.0/15")


def run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def namespace():
    name = f"nbvm{os.getpid()}{secrets.token_hex(3)}"
    run("ip", "netns", "add", name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def lladdr_for(index):
    """Return a locally administered unicast MAC derived from ``index``."""
    return "02:00:" + ":".join(f"{b:02x}" for b in index.to_bytes(4, "big"))


@pytest.mark.integration
def test_veth_neighbor_read_over_netlink(namespace):
    run("ip", "-n", namespace, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
    run("ip", "-n", namespace, "link", "set", "veth0", "up")
    run("ip", "-n", namespace, "addr", "add", "198.18.0.1/24", "dev", "veth0")
    run("ip", "-n", namespace, "neigh", "add", "198.18.0.2", "lladdr", "02:00:00:00:00:02",
        "nud", "permanent", "dev", "veth0")

    with netns.entered(namespace):
        ipr = IPRoute()
    try:
        ifindex = ipr.link_lookup(ifname="veth0")[0]
        neighbors = [n for n in ipr.get_neighbours(family=2, ifindex=ifindex)
                     if n.get_attr("NDA_DST") == "198.18.0.2"]
    finally:
        ipr.close()

    assert len(neighbors) == 1
    assert neighbors[0].get_attr("NDA_LLADDR") == "02:00:00:00:00:02"
    assert neighbors[0]["state"] == 0x80  # NUD_PERMANENT


@pytest.fixture
def raised_gc_thresh3():
    """Raise the global neighbor limit to 16384 and restore it afterwards."""
    with open(GC_THRESH3) as f:
        saved = f.read().strip()
    with open(GC_THRESH3, "w") as f:
        f.write("16384")
    try:
        yield 16384
    finally:
        with open(GC_THRESH3, "w") as f:
            f.write(saved)


@pytest.mark.vm
def test_five_thousand_permanent_neighbors(namespace, raised_gc_thresh3):
    count = 5000
    run("ip", "-n", namespace, "link", "add", "dummy0", "type", "dummy")
    run("ip", "-n", namespace, "link", "set", "dummy0", "up")
    run("ip", "-n", namespace, "addr", "add", "198.18.0.1/15", "dev", "dummy0")

    # One `ip -batch` process adds all entries, because starting 5,000
    # processes is slow under software emulation.
    hosts = list(BENCH_NET.hosts())[1:count + 1]
    batch = "".join(f"neigh add {ip} lladdr {lladdr_for(i)} nud permanent dev dummy0\n"
                    for i, ip in enumerate(hosts))
    subprocess.run(["ip", "-n", namespace, "-batch", "-"], input=batch, check=True, text=True)

    entries = json.loads(run("ip", "-n", namespace, "-j", "-4", "neigh", "show", "dev", "dummy0"))
    assert len(entries) == count
    assert {e["dst"] for e in entries} == {str(ip) for ip in hosts}
    assert all(e["state"] == ["PERMANENT"] for e in entries)
