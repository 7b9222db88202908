"""neighbpf against the failures it must survive without diverging from the kernel.

Each test builds its own namespaces (``host`` is mirrored, ``peer``
replies to ARP), runs the daemon or the mirror against the real neighbor
table and pinned maps, provokes one kind of failure and then checks what
can be observed: the pinned map against ``ip -j neigh``, ``neighbpf
verify``, and the counters that ``neighbpf stats -j`` shows.

Neighbor counts stay at a few hundred, because the kernel's gc_thresh3
(1024 by default) limits the IPv4 neighbors of all namespaces together.
The largest set, 500 entries, is permanent, and the kernel does not
count permanent entries against that limit (exempt_from_gc in
net/core/neighbour.c).
"""

import collections
import ctypes
import errno
import json
import logging
import os
import select
import signal
import socket
import struct
import time

import pytest
from bcc.libbcc import lib as bcc_lib

from daemonproc import (HOST_ADDR, PEER_ADDRS, DaemonProcess, daemons, expected_entries,  # noqa: F401
                        host_peer, ifindex_of, ip_batch, learn_by_ping, map_lladdrs, neighbpf, netns_lab,
                        stats_json, verify_within, wait_for)
from neighbpf import abi, codec, features, kernel, netns
from neighbpf.bpfmap import PinnedMaps
from neighbpf.daemon import PinDirLock
from neighbpf.errors import AbiMismatchError, NetlinkError
from neighbpf.kernel import KernelSource
from neighbpf.mirror import Mirror
from neighbpf.table import UPSERT, NeighborTable
from neighbpf.table import decide as table_decide
from neighbpf.xdp import ForwardStage
from nslab import ROUTED_CLIENT_ADDR, ROUTED_SERVER_ADDR, call_in_netns, ip

NETLINK_GET_STRICT_CHK = 12

pytestmark = pytest.mark.integration


def mac(*octets):
    """Return a locally administered MAC ``02:00:<octets>`` as text, padded to six octets."""
    tail = list(octets) + [0] * (4 - len(octets))
    return "02:00:" + ":".join(f"{b:02x}" for b in tail)


def neigh_lines(command, addresses, dev, lladdr_of=None, nud="permanent"):
    """Return ``neigh COMMAND`` lines for ``ip -batch``, one per address."""
    lines = []
    for index, address in enumerate(addresses):
        line = f"neigh {command} {address} dev {dev}"
        if lladdr_of is not None:
            line += f" lladdr {lladdr_of(index)} nud {nud}"
        lines.append(line)
    return lines


def churn_addresses(count, third_octet=10):
    """Return ``count`` addresses from 198.18.<third_octet>.1 upwards, 250 per /24.

    They stay clear of the namespaces' own addresses (198.18.7.0/24 and
    198.18.9.0/24): a neighbor entry for a local address has type
    RTN_LOCAL, which the ingest rules never mirror.
    """
    return [f"198.18.{third_octet + i // 250}.{1 + i % 250}" for i in range(count)]


def add_second_link(host_peer, cidr="198.18.9.1/24"):
    """Add veth d2 (host, ``cidr``) -- d3 (peer); return d2's ifindex."""
    host_peer.lab.add_veth(host_peer.host, "d2", host_peer.peer, "d3")
    host_peer.lab.add_addr(host_peer.host, "d2", cidr)
    return ifindex_of(host_peer.host, "d2")


# Overrun.

# Half of the passes leave STALE entries, which count against gc_thresh3.
OVERRUN_ADDRESSES = 300
OVERRUN_PASSES = 8


def test_overrun_resyncs(host_peer, daemons):
    host, pin_dir = host_peer.host, host_peer.pin_dir
    addresses = churn_addresses(OVERRUN_ADDRESSES)
    ip_batch(host, neigh_lines("add", addresses[:50], "d0", lambda i: mac(1, 0, i // 256, i % 256)))
    # 4096 bytes (the kernel doubles it) queue only a few notifications.
    daemon = DaemonProcess(host, pin_dir, "--no-xdp", "--rcvbuf", "4096")
    daemons.append(daemon)
    daemon.start()
    assert verify_within(host, pin_dir).returncode == 0

    daemon.signal(signal.SIGSTOP)
    changes = 0
    for pass_number in range(OVERRUN_PASSES):
        lines = neigh_lines("replace", addresses, "d0", lambda i: mac(2, pass_number, i // 256, i % 256),
                            nud="permanent" if pass_number % 2 else "stale")
        ip_batch(host, lines)
        changes += len(lines)
    deleted = neigh_lines("del", addresses[::3], "d0")
    ip_batch(host, deleted)
    changes += len(deleted)
    daemon.signal(signal.SIGCONT)
    resumed = time.monotonic()

    verified = verify_within(host, pin_dir, timeout_s=2.0)
    verified_after_s = time.monotonic() - resumed
    assert verified.returncode == 0, verified.stdout
    assert map_lladdrs(pin_dir) == expected_entries(host)
    assert changes >= 2000
    print(f"{changes} changes while stopped; verify passed {verified_after_s:.2f} s after SIGCONT")

    daemon.wait_counter("resync_overrun", 1, timeout_s=3.0)
    counters = stats_json(pin_dir)["daemon"]["counters"]
    assert counters.get("netlink_overruns", 0) >= 1
    assert counters.get("resync_overrun", 0) >= 1


# Dumps.

GET_STRICT_CHK_EXTACK = "Invalid values in header for neighbor dump request"


def dump_request_with_state(seq, ifindex=0):
    """Return an RTM_GETNEIGH dump request whose ndmsg carries ndm_state NUD_REACHABLE.

    With NETLINK_GET_STRICT_CHK the kernel rejects it in
    neigh_valid_dump_req() (net/core/neighbour.c, Linux 4.20 and later).
    """
    body = struct.pack("=BxxxiHBB", codec.AF_INET, ifindex, codec.NUD_REACHABLE, 0, 0)
    header = struct.pack("=IHHII", 16 + len(body), codec.RTM_GETNEIGH,
                         codec.NLM_F_REQUEST | codec.NLM_F_DUMP, seq, 0)
    return header + body


def nothing_queued(sock, timeout_s=0.2):
    readable, _, _ = select.select([sock], [], [], timeout_s)
    return not readable


def add_permanent(netns_name, addresses, dev="d0", tag=1):
    ip_batch(netns_name, neigh_lines("replace", addresses, dev, lambda i: mac(tag, 0, i // 256, i % 256)))


@pytest.fixture
def source(host_peer):
    """A KernelSource in the host namespace, closed after the test."""
    kernel_source = KernelSource(host_peer.host)
    try:
        yield kernel_source
    finally:
        kernel_source.close()


def dumped_entries(source):
    table = NeighborTable()
    for msg in source.dump_neighbors():
        table.apply(msg)
    return {key: entry.lladdr for key, entry in table.entries.items()}


def test_dump_error_carries_extack(host_peer, source, monkeypatch):
    add_permanent(host_peer.host, churn_addresses(20))
    if not features.has_strict_check():
        pytest.skip("kernel rejects NETLINK_GET_STRICT_CHK (needs Linux 4.20)")
    source.requests.setsockopt(kernel.SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)

    monkeypatch.setattr(codec, "encode_neigh_dump_request", dump_request_with_state)
    with pytest.raises(NetlinkError) as raised:
        source.dump_neighbors()
    monkeypatch.undo()

    assert raised.value.errno == errno.EINVAL
    assert raised.value.extack == GET_STRICT_CHK_EXTACK
    assert "EINVAL" in str(raised.value)
    assert GET_STRICT_CHK_EXTACK in str(raised.value)
    assert nothing_queued(source.requests)
    # The same socket serves the next dump, and it is complete.
    assert dumped_entries(source) == expected_entries(host_peer.host)


def test_dump_reads_to_done(host_peer, source):
    add_second_link(host_peer)
    # 500 entries of about 76 bytes take at least two datagrams each
    # time: the kernel fills at most about 32 KiB per dump datagram.
    add_permanent(host_peer.host, churn_addresses(400))
    add_permanent(host_peer.host, churn_addresses(100, third_octet=20), dev="d2")
    expected = expected_entries(host_peer.host)
    assert len(expected) == 500

    first = dumped_entries(source)
    assert nothing_queued(source.requests)
    second = dumped_entries(source)

    assert first == expected
    assert second == expected
    assert source.counters["dump_foreign_seq"] == 0
    d0 = ifindex_of(host_peer.host, "d0")
    filtered = source.dump_neighbors(d0)
    assert {msg.ifindex for msg in filtered} == {d0}
    assert nothing_queued(source.requests)
    assert len(filtered) == 400


# Trust.

def nla(nla_type, value):
    data = struct.pack("=HH", 4 + len(value), nla_type) + value
    return data + b"\0" * (-len(data) % 4)


def forged_newneigh(ifindex, dst, lladdr):
    """Return an RTM_NEWNEIGH datagram that, from the kernel, would add ``dst`` with ``lladdr``.

    nlmsg_pid is 0, as in a notification the kernel raises on its own, so
    only the datagram's source port id can tell it apart.
    """
    body = struct.pack("=BxxxiHBB", codec.AF_INET, ifindex, codec.NUD_PERMANENT, 0, codec.RTN_UNICAST)
    body += nla(codec.NDA_DST, socket.inet_aton(dst))
    body += nla(codec.NDA_LLADDR, lladdr)
    return struct.pack("=IHHII", 16 + len(body), codec.RTM_NEWNEIGH, 0, 0, 0) + body


@pytest.fixture
def mirror(host_peer):
    """A Mirror of the host namespace into fresh pins, after its first full resync."""
    maps = PinnedMaps.open(host_peer.pin_dir, create=True, max_entries=64)
    mirror = Mirror(maps, KernelSource(host_peer.host))
    try:
        mirror.full_resync("start")
        yield mirror
    finally:
        mirror.close()
        maps.close()


def test_forged_event_is_dropped(host_peer, mirror):
    add_permanent(host_peer.host, churn_addresses(5))
    while mirror.source.wait(0.5):
        mirror.poll()
    table_before = dict(mirror.table.entries)
    map_before = mirror.maps.neigh.read_all()
    assert len(map_before) == 5

    d0 = ifindex_of(host_peer.host, "d0")
    forged = forged_newneigh(d0, "198.18.7.77", bytes.fromhex("02feedbeef77"))
    # The bytes are a neighbor record the ingest rules would accept from the kernel.
    decoded = list(codec.iter_messages(forged, collections.Counter()))
    assert len(decoded) == 1
    assert table_decide(decoded[0]) == (UPSERT, "valid")

    sender = call_in_netns(host_peer.host, socket.socket, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    with sender:
        sender.bind((0, 0))
        # Unicast to the event socket, and multicast to every RTNLGRP_NEIGH listener.
        sender.sendto(forged, (mirror.source.event_portid, 0))
        sender.sendto(forged, (0, 1 << (codec.RTNLGRP_NEIGH - 1)))
        # Unicast to the request socket, which a dump then reads past.
        sender.sendto(forged, (mirror.source.request_portid, 0))
        assert mirror.source.wait(1.0)
        mirror.poll()
        mirror.resync_ifindex(d0, "test")

    assert mirror.source.counters["untrusted_sender"] == 3
    assert mirror.table.entries == table_before
    assert mirror.maps.neigh.read_all() == map_before
    assert (d0, socket.inet_aton("198.18.7.77")) not in mirror.maps.neigh.read_all()


# Reconcile.

def test_reconcile_repairs_foreign_writes(host_peer, daemons):
    host, pin_dir = host_peer.host, host_peer.pin_dir
    addresses = churn_addresses(10)
    add_permanent(host, addresses)
    daemon = DaemonProcess(host, pin_dir, "--no-xdp", "--reconcile-interval", "0.5")
    daemons.append(daemon)
    daemon.start()
    assert verify_within(host, pin_dir).returncode == 0

    d0 = ifindex_of(host, "d0")
    bogus_key = (d0, socket.inet_aton("198.18.9.99"))
    changed_key = (d0, socket.inet_aton(addresses[0]))
    with PinnedMaps.open(pin_dir) as maps:
        _, state, flags = maps.neigh.read_all()[changed_key]
        result = maps.neigh.update_batch([
            (bogus_key, (bytes.fromhex("02badbadbad0"), codec.NUD_PERMANENT, 0)),
            (changed_key, (bytes.fromhex("02badbadbad1"), state, flags)),
        ])
    written = time.monotonic()
    assert result.written == 2

    repaired = wait_for(lambda: map_lladdrs(pin_dir) == expected_entries(host), timeout_s=2.0, interval_s=0.02)
    repaired_after_s = time.monotonic() - written
    assert repaired
    # One reconcile interval (0.5 s), plus up to 0.2 s of event-loop wait and slack for a loaded machine.
    assert repaired_after_s < 1.5
    assert daemon.wait_counter("drift_repaired", 2, timeout_s=2.5) >= 2
    assert stats_json(pin_dir)["daemon"]["counters"]["drift_repaired"] >= 2
    assert verify_within(host, pin_dir).returncode == 0


# Capacity.

def test_full_map_keeps_correct_entries(host_peer):
    host, pin_dir = host_peer.host, host_peer.pin_dir
    add_permanent(host, churn_addresses(20))
    expected = expected_entries(host)
    assert len(expected) == 20

    result = neighbpf("sync", "--once", "--json", "--max-entries", "8", "--netns", host, "--pin-dir", pin_dir)

    in_map = map_lladdrs(pin_dir)
    assert len(in_map) == 8
    for key, lladdr in in_map.items():
        assert expected.get(key) == lladdr
    # One rate-limited warning for the 12 rejected entries, then the summary line.
    warnings = [line for line in result.stderr.splitlines() if " WARNING " in line]
    assert len(warnings) == 1, result.stderr
    assert "is full (max_entries 8)" in warnings[0]
    assert result.stderr.strip().splitlines()[-1].startswith("neighbpf: 12 of 20 neighbors not mirrored")
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["not_mirrored"] == 12


def test_full_map_is_not_drift(host_peer, caplog):
    host, pin_dir = host_peer.host, host_peer.pin_dir
    add_permanent(host, churn_addresses(20))
    maps = PinnedMaps.open(pin_dir, create=True, max_entries=8)
    mirror = Mirror(maps, KernelSource(host))
    try:
        with caplog.at_level(logging.WARNING, logger="neighbpf"):
            result = mirror.full_resync("start")
            drift = [mirror.reconcile() for _ in range(3)]
    finally:
        mirror.close()
        maps.close()

    assert result.not_mirrored == 12
    assert mirror.counters["map_full"] >= 12
    # Entries that do not fit are retried, but they are not drift that a reconcile repairs.
    assert drift == [0, 0, 0]
    assert mirror.counters["drift_repaired"] == 0
    full_records = [r for r in caplog.records if "full" in r.getMessage()]
    assert len(full_records) == 1, [r.getMessage() for r in caplog.records]


def test_default_max_entries_covers_gc_thresh3(host_peer):
    with open("/proc/sys/net/ipv4/neigh/default/gc_thresh3") as f:
        gc_thresh3 = int(f.read())
    result = neighbpf("sync", "--once", "--netns", host_peer.host, "--pin-dir", host_peer.pin_dir)
    assert result.returncode == 0, result.stderr
    with PinnedMaps.open(host_peer.pin_dir) as maps:
        assert maps.neigh.max_entries >= gc_thresh3


# Links.

def keys_of(pin_dir, ifindex):
    return {key for key in map_lladdrs(pin_dir) if key[0] == ifindex}


def test_deleted_link_is_purged(host_peer, daemons):
    host, pin_dir = host_peer.host, host_peer.pin_dir
    d2 = add_second_link(host_peer)
    add_permanent(host, churn_addresses(5))
    add_permanent(host, churn_addresses(5, third_octet=20), dev="d2")
    learn_by_ping(host, PEER_ADDRS[:2])
    daemon = DaemonProcess(host, pin_dir, "--no-xdp")
    daemons.append(daemon)
    daemon.start()
    assert verify_within(host, pin_dir).returncode == 0
    assert len(keys_of(pin_dir, d2)) == 5

    ip("link", "del", "d2", netns_name=host)

    assert wait_for(lambda: not keys_of(pin_dir, d2), timeout_s=2.0)
    assert verify_within(host, pin_dir).returncode == 0
    assert map_lladdrs(pin_dir) == expected_entries(host)
    assert len(map_lladdrs(pin_dir)) == 7


def test_dellink_alone_purges(host_peer, mirror, monkeypatch):
    host, pin_dir = host_peer.host, host_peer.pin_dir
    d2 = add_second_link(host_peer)
    # Without carrier, deleting d2 changes no carrier bit, so no filtered
    # dump of d2 runs before RTM_DELLINK; permanent entries stay.
    ip("link", "set", "d3", "down", netns_name=host_peer.peer)
    add_permanent(host, churn_addresses(5, third_octet=20), dev="d2")

    def carrier_off_seen():
        # linkwatch may hold a carrier notification back for up to 1 s.
        if mirror.source.wait(0.1):
            mirror.poll()
        return d2 in mirror.links and not mirror.links[d2].ifi_flags & codec.IFF_LOWER_UP

    assert wait_for(carrier_off_seen, timeout_s=3.0)
    while mirror.source.wait(0.2):
        mirror.poll()
    assert len(keys_of(pin_dir, d2)) == 5

    # Linux announces each entry it flushes with the link (neigh_flush_dev()
    # in net/core/neighbour.c), so the purge on RTM_DELLINK is what covers
    # a kernel that does not: drop those RTM_DELNEIGH from the real feed.
    read_events = mirror.source.read_events
    dropped = []

    def without_d2_neighbors(*args, **kwargs):
        messages = read_events(*args, **kwargs)
        dropped.extend(m for m in messages if isinstance(m, codec.NeighMessage) and m.ifindex == d2)
        return [m for m in messages if not (isinstance(m, codec.NeighMessage) and m.ifindex == d2)]

    monkeypatch.setattr(mirror.source, "read_events", without_d2_neighbors)
    ip("link", "del", "d2", netns_name=host)
    while mirror.source.wait(0.5):
        mirror.poll()

    assert len(dropped) >= 5
    assert mirror.table.counters["purged"] == 5
    assert not keys_of(pin_dir, d2)
    assert map_lladdrs(pin_dir) == expected_entries(host)


def test_carrier_loss_flushes_entries(host_peer, daemons):
    host, peer, pin_dir = host_peer.host, host_peer.peer, host_peer.pin_dir
    d0 = ifindex_of(host, "d0")
    add_permanent(host, churn_addresses(5))
    learn_by_ping(host, PEER_ADDRS)
    daemon = DaemonProcess(host, pin_dir, "--no-xdp")
    daemons.append(daemon)
    daemon.start()
    assert verify_within(host, pin_dir).returncode == 0
    learned = {(d0, socket.inet_aton(a)) for a in PEER_ADDRS}
    assert learned <= keys_of(pin_dir, d0)

    # The peer going down takes d0's carrier; neigh_carrier_down() flushes
    # every entry of d0 except the permanent ones.
    ip("link", "set", "d1", "down", netns_name=peer)
    # The carrier change reaches the neighbor table through linkwatch, a work queue.
    assert wait_for(lambda: not learned & expected_entries(host).keys(), timeout_s=2.0)
    assert verify_within(host, pin_dir).returncode == 0
    assert not learned & keys_of(pin_dir, d0)
    assert map_lladdrs(pin_dir) == expected_entries(host)
    assert len(keys_of(pin_dir, d0)) == 5
    assert daemon.wait_counter("link_resyncs", 1, timeout_s=2.5) >= 1

    ip("link", "set", "d1", "up", netns_name=peer)
    assert daemon.wait_counter("link_resyncs", 2, timeout_s=2.5) >= 2
    learn_by_ping(host, PEER_ADDRS)
    assert verify_within(host, pin_dir).returncode == 0
    assert learned <= keys_of(pin_dir, d0)
    assert map_lladdrs(pin_dir) == expected_entries(host)


def test_mac_change_resyncs_link(host_peer, daemons):
    host, pin_dir = host_peer.host, host_peer.pin_dir
    d0 = ifindex_of(host, "d0")
    add_permanent(host, churn_addresses(5))
    learn_by_ping(host, PEER_ADDRS[:3])
    daemon = DaemonProcess(host, pin_dir, "--no-xdp")
    daemons.append(daemon)
    daemon.start()
    assert verify_within(host, pin_dir).returncode == 0

    ip("link", "set", "dev", "d0", "address", "02:00:00:aa:bb:cc", netns_name=host)

    assert verify_within(host, pin_dir).returncode == 0
    assert map_lladdrs(pin_dir) == expected_entries(host)
    assert daemon.wait_counter("link_resyncs", 1, timeout_s=2.5) >= 1
    with PinnedMaps.open(pin_dir) as maps:
        assert maps.ifaces.read_all()[d0] == bytes.fromhex("020000aabbcc")


def test_iface_followed_across_recreation(host_peer, daemons):
    host, peer, pin_dir = host_peer.host, host_peer.peer, host_peer.pin_dir
    d2 = add_second_link(host_peer)
    old_d0 = ifindex_of(host, "d0")
    add_permanent(host, churn_addresses(5))
    add_permanent(host, churn_addresses(5, third_octet=20), dev="d2")
    daemon = DaemonProcess(host, pin_dir, "--no-xdp", "--iface", "d0")
    daemons.append(daemon)
    daemon.start()
    assert verify_within(host, pin_dir, iface_names=["d0"]).returncode == 0
    assert len(keys_of(pin_dir, old_d0)) == 5
    assert not keys_of(pin_dir, d2)

    ip("link", "del", "d0", netns_name=host)
    assert wait_for(lambda: not map_lladdrs(pin_dir), timeout_s=2.0)
    host_peer.lab.add_veth(host, "d0", peer, "d1")
    host_peer.lab.add_addr(host, "d0", f"{HOST_ADDR}/24")
    for address in PEER_ADDRS[:2]:
        host_peer.lab.add_addr(peer, "d1", f"{address}/24")
    new_d0 = ifindex_of(host, "d0")
    assert new_d0 != old_d0
    add_permanent(host, churn_addresses(7), tag=3)
    learn_by_ping(host, PEER_ADDRS[:2])

    assert verify_within(host, pin_dir, iface_names=["d0"]).returncode == 0
    assert len(keys_of(pin_dir, new_d0)) == 9
    assert not keys_of(pin_dir, d2)
    assert not keys_of(pin_dir, old_d0)


# Restarts.

def test_restart_after_sigkill_repairs(host_peer, daemons):
    host, pin_dir = host_peer.host, host_peer.pin_dir
    addresses = churn_addresses(30)
    add_permanent(host, addresses)
    learn_by_ping(host, PEER_ADDRS[:2])
    first = DaemonProcess(host, pin_dir, "--no-xdp")
    daemons.append(first)
    first.start()
    assert verify_within(host, pin_dir).returncode == 0

    first.kill()
    assert os.path.exists(os.path.join(pin_dir, abi.PIN_NEIGH4))
    assert map_lladdrs(pin_dir) == expected_entries(host)

    ip_batch(host, neigh_lines("del", addresses[:10], "d0"))
    add_permanent(host, addresses[10:20], tag=4)
    add_permanent(host, churn_addresses(10, third_octet=12), tag=5)
    stale = neighbpf("verify", "--netns", host, "--pin-dir", pin_dir)
    assert stale.returncode == 1
    assert len(stale.stdout.splitlines()) == 31  # 10 extra, 10 different, 10 missing, the summary

    second = DaemonProcess(host, pin_dir, "--no-xdp")
    daemons.append(second)
    second.start()
    assert verify_within(host, pin_dir).returncode == 0
    assert map_lladdrs(pin_dir) == expected_entries(host)


CLIENT_ADDR = ROUTED_CLIENT_ADDR
SERVER_ADDR = ROUTED_SERVER_ADDR
UDP_PORT = 40000
PACKETS = 50
# <linux/in.h>: IP_RECVTTL enables an IP_TTL control message on receive.
IP_RECVTTL = 12


@pytest.fixture
def routed(netns_lab):
    """client (c0) -- (r0) router (r1) -- (s0) server; the router forwards and has resolved both hosts."""
    client, router, server = netns_lab.add_routed()
    learn_by_ping(router, [CLIENT_ADDR, SERVER_ADDR])
    return {"client": client, "router": router, "server": server, "pin_dir": netns_lab.add_pin_dir()}


def xdp_attached(netns_name, ifname):
    """Return the ``xdp`` object that ``ip -j link`` shows for ``ifname``, or None."""
    return json.loads(ip("-j", "link", "show", "dev", ifname, netns_name=netns_name))[0].get("xdp")


def send_and_receive(client, server, count):
    """Send ``count`` UDP datagrams client -> server; return the TTLs the server received."""
    receiver = call_in_netns(server, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    sender = call_in_netns(client, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    with receiver, sender:
        receiver.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        receiver.bind(("0.0.0.0", UDP_PORT))
        for sequence in range(count):
            sender.sendto(struct.pack("!I", sequence), (SERVER_ADDR, UDP_PORT))
        ttls = []
        while len(ttls) < count and select.select([receiver], [], [], 2.0)[0]:
            _, ancillary, _, _ = receiver.recvmsg(64, socket.CMSG_SPACE(4))
            ttls += [struct.unpack("i", data[:4])[0] for level, kind, data in ancillary
                     if level == socket.IPPROTO_IP and kind == socket.IP_TTL]
        return ttls


def test_keep_xdp_serves_without_daemon(routed, daemons):
    router, pin_dir = routed["router"], routed["pin_dir"]
    xdp_args = ("--iface", "r0", "--iface", "r1", "--xdp-mode", "generic")
    first = DaemonProcess(router, pin_dir, *xdp_args, "--keep-xdp")
    daemons.append(first)
    first.start(ready_timeout_s=60)
    assert verify_within(router, pin_dir).returncode == 0
    assert first.terminate() == 0

    for ifname in ("r0", "r1"):
        assert xdp_attached(router, ifname) is not None, ifname
    stats = stats_json(pin_dir)
    assert stats["daemon"] is None
    hits_before = stats["xdp"]["hits"]
    ttls = send_and_receive(routed["client"], routed["server"], PACKETS)
    assert ttls == [63] * PACKETS
    assert stats_json(pin_dir)["xdp"]["hits"] - hits_before == PACKETS

    # The next daemon takes over the stage left in place, and without
    # --keep-xdp its clean stop detaches it.
    second = DaemonProcess(router, pin_dir, *xdp_args)
    daemons.append(second)
    second.start(ready_timeout_s=60)
    hits_before = stats_json(pin_dir)["xdp"]["hits"]
    assert send_and_receive(routed["client"], routed["server"], PACKETS) == [63] * PACKETS
    assert stats_json(pin_dir)["xdp"]["hits"] - hits_before == PACKETS
    assert second.terminate() == 0
    for ifname in ("r0", "r1"):
        assert xdp_attached(router, ifname) is None, ifname


def test_clean_stop_detaches_xdp(host_peer, daemons):
    host_peer.lab.sysctl(host_peer.host, "net.ipv4.ip_forward", 1)
    daemon = DaemonProcess(host_peer.host, host_peer.pin_dir, "--iface", "d0", "--xdp-mode", "generic")
    daemons.append(daemon)
    daemon.start(ready_timeout_s=60)
    assert xdp_attached(host_peer.host, "d0") is not None
    assert daemon.terminate() == 0
    assert xdp_attached(host_peer.host, "d0") is None
    assert "stopped" in daemon.stderr()


def test_xdp_refused_without_forwarding(host_peer):
    result = neighbpf("run", "--netns", host_peer.host, "--pin-dir", host_peer.pin_dir, "--iface", "d0")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert "forwarding is off on d0" in lines[-1]
    assert "--no-xdp" in lines[-1]
    assert xdp_attached(host_peer.host, "d0") is None


def test_second_writer_refused(host_peer, daemons):
    daemon = DaemonProcess(host_peer.host, host_peer.pin_dir, "--no-xdp")
    daemons.append(daemon)
    daemon.start(ready_timeout_s=60)
    for command in (["run", "--no-xdp"], ["sync", "--once"]):
        result = neighbpf(*command, "--netns", host_peer.host, "--pin-dir", host_peer.pin_dir)
        assert result.returncode == 2
        last_line = result.stderr.strip().splitlines()[-1]
        assert f"pid {daemon.pid}" in last_line
        assert host_peer.pin_dir in last_line
    assert daemon.terminate() == 0
    result = neighbpf("sync", "--once", "--netns", host_peer.host, "--pin-dir", host_peer.pin_dir)
    assert result.returncode == 0, result.stderr
    # Each writer removes its lock file when it is done.
    assert not os.path.exists(PinDirLock(host_peer.pin_dir).path)


def write_abi_version(pin_dir, version):
    """Overwrite meta.abi_version in the pinned meta map, as a neighbpf of another ABI would have."""
    fd = bcc_lib.bpf_obj_get(os.path.join(pin_dir, abi.PIN_META).encode())
    assert fd >= 0
    try:
        meta = abi.Meta(abi_version=version)
        assert bcc_lib.bpf_update_elem(fd, ctypes.byref(ctypes.c_uint32(0)), ctypes.byref(meta), 0) == 0
    finally:
        os.close(fd)


def test_other_abi_version_exit_2(host_peer):
    host, pin_dir = host_peer.host, host_peer.pin_dir
    PinnedMaps.open(pin_dir, create=True, max_entries=16).close()
    other_version = abi.ABI_VERSION + 1
    write_abi_version(pin_dir, other_version)

    for command in (["run", "--no-xdp"], ["sync", "--once"], ["verify"]):
        result = neighbpf(*command, "--netns", host, "--pin-dir", pin_dir, timeout_s=30)
        assert result.returncode == 2, command
        last_line = result.stderr.strip().splitlines()[-1]
        assert last_line.startswith("neighbpf: error: ")
        assert f"ABI version {other_version}" in last_line
        assert f"remove {pin_dir} or use another --pin-dir" in last_line
        assert "Traceback" not in result.stderr
    with pytest.raises(AbiMismatchError):
        PinnedMaps.open(pin_dir)


def test_foreign_xdp_program_is_kept(host_peer, daemons):
    host, pin_dir = host_peer.host, host_peer.pin_dir
    host_peer.lab.sysctl(host, "net.ipv4.ip_forward", 1)
    # A forward stage of another pin directory is not the daemon's to replace.
    other_pin_dir = host_peer.lab.add_pin_dir("o")
    other_maps = PinnedMaps.open(other_pin_dir, create=True, max_entries=16)
    other_stage = ForwardStage(other_pin_dir)
    try:
        with netns.entered(host):
            other_stage.attach("d0", "generic")
        program_id = xdp_attached(host, "d0")["prog"]["id"]

        result = neighbpf("run", "--netns", host, "--pin-dir", pin_dir, "--iface", "d0", "--xdp-mode", "generic",
                          timeout_s=60)

        assert result.returncode == 2
        assert "d0 already has an XDP program" in result.stderr.strip().splitlines()[-1]
        assert xdp_attached(host, "d0")["prog"]["id"] == program_id
    finally:
        with netns.entered(host):
            other_stage.detach("d0")
        other_stage.close()
        other_maps.close()
