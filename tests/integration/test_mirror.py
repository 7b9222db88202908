"""The pinned map against the real kernel table: sync, verify, the daemon.

Each test builds two namespaces joined by a veth pair: ``host`` is the
namespace neighbpf mirrors, ``peer`` answers ARP so that some entries are
learned for real. The expected map is computed independently from
``ip -j neigh show nud all``.
"""

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from neighbpf.daemon import REPORTED_COUNTERS, STATS_INTERVAL_S

pytestmark = pytest.mark.integration

NEIGHBPF = [sys.executable, "-m", "neighbpf.cli"]
VALID_STATES = {"PERMANENT", "NOARP", "REACHABLE", "STALE", "DELAY", "PROBE"}
HOST_ADDR = "198.18.7.1"
PEER_ADDRS = [f"198.18.7.{i}" for i in range(2, 12)]


def ip(*args, netns=None, check=True):
    command = ["ip"] + (["-n", netns] if netns else []) + list(args)
    return subprocess.run(command, check=check, capture_output=True, text=True).stdout


def neighbpf(*args, check=False, timeout=60):
    return subprocess.run(NEIGHBPF + list(args), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def pair(request):
    """Two fresh namespaces, host and peer, joined by veth d0 -- d1."""
    tag = f"nbt{os.getpid() % 100000}{request.node.name[-6:].replace('[', '').replace(']', '')}"
    host, peer = f"{tag}h", f"{tag}p"
    pin_dir = f"/sys/fs/bpf/{tag}"
    ip("netns", "add", host)
    try:
        ip("netns", "add", peer)
        ip("link", "add", "d0", "netns", host, "type", "veth", "peer", "d1", "netns", peer)
        ip("addr", "add", f"{HOST_ADDR}/24", "dev", "d0", netns=host)
        for address in PEER_ADDRS:
            ip("addr", "add", f"{address}/24", "dev", "d1", netns=peer)
        for netns, dev in ((host, "d0"), (peer, "d1")):
            ip("link", "set", dev, "up", netns=netns)
            ip("link", "set", "lo", "up", netns=netns)
        yield {"host": host, "peer": peer, "pin_dir": pin_dir}
    finally:
        ip("netns", "del", host, check=False)
        ip("netns", "del", peer, check=False)
        if os.path.isdir(pin_dir):
            for name in os.listdir(pin_dir):
                os.unlink(os.path.join(pin_dir, name))
            os.rmdir(pin_dir)


def learn_by_ping(netns, addresses):
    for address in addresses:
        subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "1", address],
                       capture_output=True, check=False)


def wait_for_state(netns, address, state, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = json.loads(ip("-j", "neigh", "show", address, netns=netns) or "[]")
        if rows and state in rows[0].get("state", []):
            return
        time.sleep(0.05)
    pytest.fail(f"{address} did not reach {state} in {timeout_s} s: {rows}")


def add_every_kind(netns):
    """Add one entry of each kind the ingest rules distinguish."""
    learn_by_ping(netns, PEER_ADDRS[:3])
    ip("neigh", "add", "198.18.7.100", "lladdr", "02:00:00:00:01:00", "dev", "d0", "nud", "permanent", netns=netns)
    ip("neigh", "add", "198.18.7.101", "lladdr", "02:00:00:00:01:01", "dev", "d0", "nud", "stale", netns=netns)
    ip("neigh", "add", "198.18.7.102", "lladdr", "02:00:00:00:01:02", "dev", "d0", "nud", "noarp", netns=netns)
    ip("neigh", "add", "198.18.7.103", "dev", "d0", "nud", "failed", netns=netns)
    ip("neigh", "add", "198.18.7.104", "dev", "d0", "nud", "incomplete", netns=netns)
    ip("neigh", "add", "198.18.7.105", "lladdr", "02:00:00:00:01:05", "dev", "d0", "extern_learn", netns=netns)
    ip("neigh", "add", "169.254.7.7", "lladdr", "02:00:00:00:01:07", "dev", "d0", "nud", "reachable", netns=netns)
    ip("neigh", "add", "proxy", "198.18.7.106", "dev", "d0", netns=netns)
    # Managed entries (Linux 5.16 and later) are resolved by the kernel on
    # its own: this one for an address the peer owns, the other for none.
    ip("neigh", "add", PEER_ADDRS[5], "dev", "d0", "managed", netns=netns)
    ip("neigh", "add", "198.18.7.109", "lladdr", "02:00:00:00:01:09", "dev", "d0", "managed", "extern_learn",
       netns=netns)
    wait_for_state(netns, PEER_ADDRS[5], "REACHABLE")
    ip("neigh", "add", "198.18.7.107", "lladdr", "00:00:00:00:00:00", "dev", "d0", "nud", "permanent", netns=netns)
    # A multicast destination gets an entry of type RTN_MULTICAST.
    ip("route", "add", "224.0.0.0/4", "dev", "d0", netns=netns)
    subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c",
                    "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                    "s.sendto(b'x', ('224.1.2.3', 9))"], check=True)
    ip("-6", "neigh", "add", "2001:db8::7", "lladdr", "02:00:00:00:01:08", "dev", "d0", netns=netns)


def expected_map(netns):
    """The eligible entries per the ingest rules, from ip -j neigh."""
    rows = json.loads(ip("-j", "-4", "neigh", "show", "nud", "all", netns=netns) or "[]")
    expected = {}
    for row in rows:
        address = ipaddress.IPv4Address(row["dst"])
        if address.is_multicast or row["dst"] == "255.255.255.255":
            continue
        lladdr = row.get("lladdr")
        if not lladdr or len(lladdr.split(":")) != 6 or lladdr == "00:00:00:00:00:00":
            continue
        if not VALID_STATES & set(row.get("state", [])):
            continue
        expected[(row["dev"], row["dst"])] = lladdr
    return expected


def shown_map(pin_dir, netns):
    result = neighbpf("show", "-j", "--pin-dir", pin_dir, "--netns", netns)
    assert result.returncode == 0, result.stderr
    return {(row["dev"], row["dst"]): row["lladdr"] for row in json.loads(result.stdout)}


def test_sync_once_mirrors_every_kind(pair):
    add_every_kind(pair["host"])
    expected = expected_map(pair["host"])
    result = neighbpf("sync", "--once", "--json", "--netns", pair["host"], "--pin-dir", pair["pin_dir"])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["entries"] == len(expected)
    assert {"dump_seconds", "mirror_seconds"} <= report.keys()
    assert shown_map(pair["pin_dir"], pair["host"]) == expected
    assert ("d0", "198.18.7.100") in expected
    assert ("d0", "169.254.7.7") in expected
    assert ("d0", "198.18.7.105") in expected
    assert ("d0", "198.18.7.103") not in expected
    assert ("d0", PEER_ADDRS[5]) in expected
    verified = neighbpf("verify", "--netns", pair["host"], "--pin-dir", pair["pin_dir"])
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_sync_sweeps_after_changes(pair):
    host, pin_dir = pair["host"], pair["pin_dir"]
    add_every_kind(host)
    assert neighbpf("sync", "--once", "--netns", host, "--pin-dir", pin_dir).returncode == 0
    ip("neigh", "replace", "198.18.7.100", "lladdr", "02:00:00:00:02:00", "dev", "d0", "nud", "permanent", netns=host)
    ip("neigh", "del", "198.18.7.101", "dev", "d0", netns=host)
    ip("neigh", "add", "198.18.7.120", "lladdr", "02:00:00:00:02:20", "dev", "d0", "nud", "permanent", netns=host)
    stale = neighbpf("verify", "--netns", host, "--pin-dir", pin_dir)
    assert stale.returncode == 1
    assert "198.18.7.101" in stale.stdout
    assert "198.18.7.120" in stale.stdout
    assert neighbpf("sync", "--once", "--netns", host, "--pin-dir", pin_dir).returncode == 0
    assert shown_map(pin_dir, host) == expected_map(host)
    assert neighbpf("verify", "--netns", host, "--pin-dir", pin_dir).returncode == 0


def wait_until_equal(pin_dir, netns, timeout_s=2.0):
    deadline = time.monotonic() + timeout_s
    while True:
        shown, expected = shown_map(pin_dir, netns), expected_map(netns)
        if shown == expected or time.monotonic() > deadline:
            return shown, expected
        time.sleep(0.1)


def test_daemon_follows_events(pair):
    host, pin_dir = pair["host"], pair["pin_dir"]
    ip("neigh", "add", "198.18.7.140", "lladdr", "02:00:00:00:01:40", "dev", "d0", "nud", "permanent", netns=host)
    daemon = subprocess.Popen(NEIGHBPF + ["run", "--netns", host, "--pin-dir", pin_dir, "--no-xdp"],
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(pin_dir, "neigh4")) and time.monotonic() < deadline:
            time.sleep(0.1)
        shown, expected = wait_until_equal(pin_dir, host, timeout_s=10)
        assert shown == expected
        add_every_kind(host)
        ip("neigh", "replace", "198.18.7.100", "lladdr", "02:00:00:00:03:00", "dev", "d0", "nud", "permanent", netns=host)
        ip("neigh", "del", "198.18.7.101", "dev", "d0", netns=host)
        ip("neigh", "change", "198.18.7.102", "dev", "d0", "nud", "failed", netns=host, check=False)
        shown, expected = wait_until_equal(pin_dir, host)
        assert shown == expected
        assert shown[("d0", "198.18.7.100")] == "02:00:00:00:03:00"
        assert ("d0", "198.18.7.101") not in shown
        assert neighbpf("verify", "--netns", host, "--pin-dir", pin_dir).returncode == 0
        time.sleep(STATS_INTERVAL_S * 1.5)
        stats = json.loads(neighbpf("stats", "-j", "--pin-dir", pin_dir).stdout)
        counters = stats["daemon"]["counters"]
        assert set(REPORTED_COUNTERS) <= counters.keys()
        assert counters["event_newneigh"] > 0
        assert counters["event_delneigh"] > 0
        # The IPv6 neighbor that add_every_kind adds arrives as an event.
        assert counters["table_ignored_family"] > 0
        assert stats["daemon"]["entries"] == len(expected)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=20)
    assert daemon.returncode == 0, stderr
    assert "started" in stderr
    assert "stopped" in stderr


def test_restart_sweeps_entries_removed_while_down(pair):
    host, pin_dir = pair["host"], pair["pin_dir"]
    for i in range(3):
        ip("neigh", "add", f"198.18.7.{130 + i}", "lladdr", f"02:00:00:00:04:0{i}", "dev", "d0",
           "nud", "permanent", netns=host)
    assert neighbpf("sync", "--once", "--netns", host, "--pin-dir", pin_dir).returncode == 0
    ip("neigh", "del", "198.18.7.130", "dev", "d0", netns=host)
    daemon = subprocess.Popen(NEIGHBPF + ["run", "--netns", host, "--pin-dir", pin_dir, "--no-xdp"],
                              stderr=subprocess.PIPE, text=True)
    try:
        shown, expected = wait_until_equal(pin_dir, host, timeout_s=10)
        assert ("d0", "198.18.7.130") not in shown
        assert shown == expected
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=20)
    assert daemon.returncode == 0


ERROR_CASES = [
    ("missing namespace", ["verify", "--netns", "nbt-no-such-ns"], "nbt-no-such-ns"),
    ("sync without once", ["sync"], "--once"),
    ("bad max entries", ["sync", "--once", "--max-entries", "lots"], "lots"),
    ("unknown command", ["frobnicate"], "frobnicate"),
    ("missing pins", ["show", "--pin-dir", "/sys/fs/bpf/nbt-no-such-pins"], "nbt-no-such-pins"),
]


@pytest.mark.parametrize("args,named", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_bad_input_one_line_exit_2(args, named):
    result = neighbpf(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]


def test_missing_interface_exit_2(pair):
    result = neighbpf("sync", "--once", "--netns", pair["host"], "--pin-dir", pair["pin_dir"], "--iface", "nbt-nope0")
    assert result.returncode == 2
    assert "nbt-nope0" in result.stderr.strip().splitlines()[-1]
