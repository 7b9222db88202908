"""The built-in lab end to end: real ARP, real packets, the XDP fast path."""

import json
import os
import subprocess
import sys

import pytest

from neighbpf import lab
from neighbpf.errors import UsageError

pytestmark = pytest.mark.integration


def lab_leftovers():
    present = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    return sorted(present & set(lab.NAMESPACES)) + ([lab.PIN_DIR] if os.path.exists(lab.PIN_DIR) else [])


@pytest.fixture
def lab_names_free():
    if lab_leftovers():
        pytest.skip(f"lab names in use by another run: {lab_leftovers()}")
    yield
    assert lab_leftovers() == []


def test_demo_fast_path_counts(lab_names_free):
    addresses, packets = 50, 4
    summary = lab.run_demo(addresses=addresses, packets=packets)
    sent = addresses * packets
    assert summary["resolved"] == addresses
    assert summary["map_matches_kernel"] is True
    assert summary["received"] == sent
    # Every packet, fast path or not, left the router with TTL 64 - 1.
    assert summary["ttls"] == {lab.SEND_TTL - 1: sent}
    # The first packet to each address misses; the rest are redirected.
    assert summary["xdp_misses"] == addresses
    assert summary["xdp_hits"] == addresses * (packets - 1)
    assert summary["xdp_errors"] == 0
    # The kernel forwarded only the misses, never the fast-path packets.
    assert summary["kernel_forwarded"] == addresses


@pytest.mark.parametrize("mode", ["native", "generic"])
def test_demo_json_contract(lab_names_free, mode):
    result = subprocess.run([sys.executable, "-m", "neighbpf.cli", "demo", "--json", "--addresses", "20",
                             "--xdp-mode", mode], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["xdp_hits"] > 0
    assert report["map_matches_kernel"] is True
    assert report["entries"] >= 20
    assert report["xdp_mode"] == mode
    assert "xdp_misses" in report


def test_demo_refuses_existing_names(lab_names_free):
    subprocess.run(["ip", "netns", "add", lab.ROUTER_NS], check=True)
    try:
        with pytest.raises(UsageError, match=lab.ROUTER_NS):
            lab.run_demo(addresses=2, packets=2)
    finally:
        subprocess.run(["ip", "netns", "del", lab.ROUTER_NS], check=True)


def test_demo_rejects_bad_counts():
    result = subprocess.run([sys.executable, "-m", "neighbpf.cli", "demo", "--addresses", "5000"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "5000" in result.stderr
