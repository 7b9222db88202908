"""Chaos: the daemon survives churn, pauses, kills and link re-creation without diverging.

Each round runs ``tests/tools/churn.py`` against three interfaces of a
test namespace at full speed. Once the churn has changed the kernel's
table, the test SIGKILLs and restarts the daemon and pauses it with
SIGSTOP long enough to overrun its small event socket buffer. Then it
deletes and re-creates one interface and stops the churn with SIGTERM
CHURN_AFTER_LINK_S later. So the churn covers every step, however long
the steps take on a slow machine such as a VM under software emulation.
Once the churn has stopped, ``neighbpf verify`` must pass within 2 s and
the pinned map must equal what ``ip -j neigh`` shows. After the last
round, an interface created with the churn stopped must be dumped on its
own (the daemon's ``link_resyncs`` counter).

``NEIGHBPF_CHAOS_ROUNDS`` sets the number of rounds (default 3, about
2.5 s each on a 2-core host and 15 s in the VM under software emulation).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from daemonproc import (DaemonProcess, daemons, environ_int, expected_entries, map_lladdrs,  # noqa: F401
                        netns_lab, stats_json, verify_within, wait_for)
from nslab import ip

pytestmark = pytest.mark.integration

CHURN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "churn.py")
ROUNDS = environ_int("NEIGHBPF_CHAOS_ROUNDS", 3)
# Host-side interface, peer-side interface, host address.
LINKS = (("d0", "p0", "198.18.100.1/24"), ("d2", "p2", "198.18.102.1/24"), ("d3", "p3", "198.18.103.1/24"))
# A link that appears after the last round, when the churn has stopped.
QUIET_LINK = ("d4", "p4", "198.18.104.1/24")
# Bounds of one round's churn, which the test stops with SIGTERM after
# about 2 s on a 2-core host and 7 s in the VM under software emulation.
CHURN_MAX_SECONDS = 120.0
CHURN_MAX_OPERATIONS = 1_000_000
CHURN_MAX_ALIVE = 240
CHURN_START_TIMEOUT_S = 30.0
# Churn that goes on after the interface is re-created, so that entries on
# its new ifindex come and go while the daemon follows the link's events.
CHURN_AFTER_LINK_S = 1.0
# 16 KiB (the kernel doubles it) has room for a few dozen notifications.
DAEMON_ARGS = ("--no-xdp", "--rcvbuf", "16384", "--reconcile-interval", "1")
PAUSE_S = 0.5


def create_link(lab, host, peer, link):
    host_name, peer_name, cidr = link
    lab.add_veth(host, host_name, peer, peer_name)
    lab.add_addr(host, host_name, cidr)


def start_churn(host, seed):
    argv = [sys.executable, CHURN, "--netns", host, "--operations", str(CHURN_MAX_OPERATIONS),
            "--seconds", str(CHURN_MAX_SECONDS), "--max-alive", str(CHURN_MAX_ALIVE), "--prefix", "198.19.0.0/16",
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
        table_before = expected_entries(host)
        churn = start_churn(host, seed=round_number)
        try:
            # Python and ip take a while to start on a slow machine, so the
            # round waits for the churn's first change to the kernel's table.
            churning = wait_for(lambda: churn.poll() is not None or expected_entries(host) != table_before,
                                timeout_s=CHURN_START_TIMEOUT_S)
            assert churn.poll() is None, \
                f"round {round_number}: the churn exited with status {churn.poll()} before the daemon was killed"
            assert churning, f"round {round_number}: the churn changed no neighbor within {CHURN_START_TIMEOUT_S} s"
            daemon.kill()
            daemon = DaemonProcess(host, pin_dir, *DAEMON_ARGS)
            daemons.append(daemon)
            daemon.start()

            daemon.signal(signal.SIGSTOP)
            time.sleep(PAUSE_S)
            assert churn.poll() is None, "the churn ended before the pause did; raise CHURN_MAX_SECONDS"
            daemon.signal(signal.SIGCONT)

            link = LINKS[round_number % len(LINKS)]
            ip("link", "del", link[0], netns_name=host)
            create_link(netns_lab, host, peer, link)
            time.sleep(CHURN_AFTER_LINK_S)
            churn.send_signal(signal.SIGTERM)
            stdout, stderr = churn.communicate(timeout=60)
        finally:
            if churn.poll() is None:
                churn.kill()
                churn.wait()
        assert churn.returncode == 0, stderr
        report = json.loads(stdout)
        assert report["stopped_by"] == "signal", \
            f"round {round_number}: the churn stopped at its {report['stopped_by']} limit before the round ended; " \
            "raise CHURN_MAX_SECONDS or CHURN_MAX_OPERATIONS"
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
              f"overruns {counters.get('netlink_overruns', 0)}, resyncs {counters.get('resyncs', 0)}, "
              f"link resyncs {counters.get('link_resyncs', 0)}")

    assert total_operations >= 1000 * ROUNDS
    # Counters of the daemon started in the last round: the stats file is
    # rewritten every second, so wait for one that shows the pause.
    daemon.wait_counter("resync_overrun", 1, timeout_s=3.0)
    counters = stats_json(pin_dir)["daemon"]["counters"]
    assert counters.get("netlink_overruns", 0) >= 1
    assert counters.get("resync_overrun", 0) >= 1
    assert counters.get("resync_start", 0) == 1
    assert counters.get("resyncs", 0) >= 2

    # A link that appears while the daemon keeps up is dumped on its own.
    # During the churn, the events of a re-created link can be lost in an
    # overrun, and then the full resync covers the link instead, so this
    # is checked with the churn stopped.
    link_resyncs_before = counters.get("link_resyncs", 0)
    create_link(netns_lab, host, peer, QUIET_LINK)
    assert daemon.wait_counter("link_resyncs", link_resyncs_before + 1, timeout_s=10.0) > link_resyncs_before
    verified = verify_within(host, pin_dir, timeout_s=2.0)
    assert verified.returncode == 0, f"after creating {QUIET_LINK[0]}: {verified.stdout}"
