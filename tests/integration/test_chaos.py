"""Chaos: the daemon survives churn, pauses, kills and link re-creation without diverging.

Each round runs ``tests/tools/churn.py`` against three interfaces of a
test namespace at full speed. While it runs, the test SIGKILLs and
restarts the daemon, pauses it with SIGSTOP long enough to overrun its
small event socket buffer, and deletes and re-creates one interface.
Once the churn has stopped, ``neighbpf verify`` must pass within 2 s and the pinned map
must equal what ``ip -j neigh`` shows.

``NEIGHBPF_CHAOS_ROUNDS`` sets the number of rounds (default 3, about
5 s each on 2 cores).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from daemonproc import (DaemonProcess, daemons, environ_int, expected_entries, map_lladdrs,  # noqa: F401
                        netns_lab, stats_json, verify_within)
from nslab import ip

pytestmark = pytest.mark.integration

CHURN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "churn.py")
ROUNDS = environ_int("NEIGHBPF_CHAOS_ROUNDS", 3)
# Host-side interface, peer-side interface, host address.
LINKS = (("d0", "p0", "198.18.100.1/24"), ("d2", "p2", "198.18.102.1/24"), ("d3", "p3", "198.18.103.1/24"))
CHURN_SECONDS = 3.0
CHURN_OPERATIONS = 300_000
CHURN_MAX_ALIVE = 240
# 16 KiB (the kernel doubles it) has room for a few dozen notifications.
DAEMON_ARGS = ("--no-xdp", "--rcvbuf", "16384", "--reconcile-interval", "1")
PAUSE_S = 0.5


def create_link(lab, host, peer, link):
    host_name, peer_name, cidr = link
    lab.add_veth(host, host_name, peer, peer_name)
    lab.add_addr(host, host_name, cidr)


def start_churn(host, seed):
    argv = [sys.executable, CHURN, "--netns", host, "--operations", str(CHURN_OPERATIONS),
            "--seconds", str(CHURN_SECONDS), "--max-alive", str(CHURN_MAX_ALIVE), "--prefix", "198.19.0.0/16",
            "--seed", str(seed)]
    for host_name, _, _ in LINKS:
        argv += ["--iface", host_name]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_chaos_rounds(netns_lab, daemons):
    host = netns_lab.add_netns("h")
    peer = netns_lab.add_netns("p")
    for link in LINKS:
        create_link(netns_lab, host, peer, link)
    pin_dir = netns_lab.add_pin_dir()
    daemon = DaemonProcess(host, pin_dir, *DAEMON_ARGS)
    daemons.append(daemon)
    daemon.start()

    total_operations = 0
    for round_number in range(ROUNDS):
        churn = start_churn(host, seed=round_number)
        try:
            time.sleep(0.2)
            daemon.kill()
            daemon = DaemonProcess(host, pin_dir, *DAEMON_ARGS)
            daemons.append(daemon)
            daemon.start()

            daemon.signal(signal.SIGSTOP)
            time.sleep(PAUSE_S)
            assert churn.poll() is None, "the churn ended before the pause did; raise CHURN_SECONDS"
            daemon.signal(signal.SIGCONT)

            link = LINKS[round_number % len(LINKS)]
            ip("link", "del", link[0], netns_name=host)
            create_link(netns_lab, host, peer, link)
            stdout, stderr = churn.communicate(timeout=CHURN_SECONDS + 30)
        finally:
            if churn.poll() is None:
                churn.kill()
                churn.wait()
        assert churn.returncode == 0, stderr
        report = json.loads(stdout)
        total_operations += report["operations"]
        quiet = time.monotonic()

        verified = verify_within(host, pin_dir, timeout_s=2.0)
        verified_after_s = time.monotonic() - quiet
        assert verified.returncode == 0, f"round {round_number}: {verified.stdout}"
        assert map_lladdrs(pin_dir) == expected_entries(host), f"round {round_number}"
        counters = stats_json(pin_dir)["daemon"]["counters"]
        print(f"round {round_number}: {report['operations']} ip commands in {report['seconds']} s "
              f"({report['ip_restarts']} ip restarts), "
              f"{len(map_lladdrs(pin_dir))} entries, verify passed {verified_after_s:.2f} s after the churn; "
              f"overruns {counters.get('netlink_overruns', 0)}, resyncs {counters.get('resyncs', 0)}")

    assert total_operations >= 1000 * ROUNDS
    # Counters of the daemon started in the last round: the stats file is
    # rewritten every second, so wait for one that shows the pause.
    daemon.wait_counter("resync_overrun", 1, timeout_s=3.0)
    counters = stats_json(pin_dir)["daemon"]["counters"]
    assert counters.get("netlink_overruns", 0) >= 1
    assert counters.get("resync_overrun", 0) >= 1
    assert counters.get("resync_start", 0) == 1
    assert counters.get("resyncs", 0) >= 2
    # The re-created interface was dumped on its own when it appeared.
    assert counters.get("link_resyncs", 0) >= 1
