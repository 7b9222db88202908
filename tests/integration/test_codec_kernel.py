"""The codec's dump requests sent to the running kernel, and its replies decoded.

Each test builds a fresh namespace with two veth pairs and adds neighbor
entries with `ip neigh add`, plus one learned by real ARP. It dumps with a
raw netlink socket and compares the decoded records with `ip -j` output.
"""

import collections
import ipaddress
import select
import socket

import pytest

from neighbpf import codec
from nslab import call_in_netns, ip, ip_json, netns_lab, run  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

ENTRIES_A = [
    ("198.18.9.10", "02:00:00:00:09:10", "permanent"),
    ("198.18.9.11", "02:00:00:00:09:11", "stale"),
    ("198.18.9.12", "02:00:00:00:09:12", "noarp"),
    ("198.18.9.13", "02:00:00:00:09:13", "reachable"),
]
ENTRIES_B = [
    ("198.18.10.10", "02:00:00:00:10:10", "permanent"),
    ("198.18.10.11", "02:00:00:00:10:11", "stale"),
]


@pytest.fixture
def table(netns_lab):
    """A namespace with entries on a0 (one learned by ARP from the peer) and on b0."""
    host = netns_lab.add_netns("h")
    peer = netns_lab.add_netns("p")
    netns_lab.add_veth(host, "a0", peer, "a1")
    netns_lab.add_veth(host, "b0", peer, "b1")
    netns_lab.add_addr(host, "a0", "198.18.9.1/24")
    netns_lab.add_addr(peer, "a1", "198.18.9.2/24")
    netns_lab.add_addr(host, "b0", "198.18.10.1/24")
    run("ping", "-c", "1", "-W", "2", "198.18.9.2", netns_name=host)
    for dev, entries in (("a0", ENTRIES_A), ("b0", ENTRIES_B)):
        for dst, lladdr, nud in entries:
            ip("neigh", "add", dst, "lladdr", lladdr, "dev", dev, "nud", nud, netns_name=host)
    ip("neigh", "add", "198.18.9.20", "dev", "a0", "nud", "none", netns_name=host)
    ip("neigh", "add", "2001:2::10", "lladdr", "02:00:00:00:06:10", "dev", "a0", netns_name=host)
    return host


def open_socket(netns_name):
    sock = call_in_netns(netns_name, socket.socket, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    sock.bind((0, 0))
    return sock


def dump(netns_name, request, seq):
    """Send ``request`` from a socket in ``netns_name`` and return the messages up to NLMSG_DONE."""
    counters = collections.Counter()
    messages = []
    sock = open_socket(netns_name)
    try:
        sock.send(request)
        while True:
            assert select.select([sock], [], [], 5)[0], f"no reply to dump request seq {seq} within 5 s"
            for message in codec.iter_messages(sock.recv(1 << 16), counters):
                assert message.seq == seq
                messages.append(message)
                if isinstance(message, (codec.DoneMessage, codec.ErrorMessage)):
                    assert dict(counters) == {}
                    return messages
    finally:
        sock.close()


def neigh_view(message, name_by_ifindex):
    """Return ``(dst, dev, lladdr, state names)`` in `ip -j neigh` terms."""
    lladdr = None
    if message.lladdr is not None:
        lladdr = ":".join(f"{b:02x}" for b in message.lladdr)
    dst = str(ipaddress.IPv4Address(message.dst))
    return (dst, name_by_ifindex[message.ifindex], lladdr, tuple(codec.nud_state_names(message.state)))


def ip_view(entry):
    return (entry["dst"], entry["dev"], entry.get("lladdr"), tuple(entry.get("state", ["NONE"])))


def interface_names(netns_name):
    return {link["ifindex"]: link["ifname"] for link in ip_json("link", "show", netns_name=netns_name)}


def test_neigh_dump_matches_ip(table):
    messages = dump(table, codec.encode_neigh_dump_request(seq=11), 11)
    reference = ip_json("-4", "neigh", "show", "nud", "all", netns_name=table)
    names = interface_names(table)
    neighbors = [m for m in messages if isinstance(m, codec.NeighMessage)]

    assert messages[-1].error == 0
    assert isinstance(messages[-1], codec.DoneMessage)
    assert all(m.family == codec.AF_INET for m in neighbors)
    assert all(m.msg_type == codec.RTM_NEWNEIGH for m in neighbors)
    assert sorted(neigh_view(m, names) for m in neighbors) == sorted(ip_view(entry) for entry in reference)
    views = {neigh_view(m, names)[0]: neigh_view(m, names) for m in neighbors}
    assert views["198.18.9.10"] == ("198.18.9.10", "a0", "02:00:00:00:09:10", ("PERMANENT",))
    assert views["198.18.9.20"] == ("198.18.9.20", "a0", None, ("NONE",))
    assert views["198.18.9.2"][3] in {("REACHABLE",), ("STALE",), ("DELAY",), ("PROBE",)}


def test_neigh_dump_filtered_by_ifindex(table):
    names = interface_names(table)
    b0_ifindex = {name: ifindex for ifindex, name in names.items()}["b0"]

    messages = dump(table, codec.encode_neigh_dump_request(seq=12, ifindex=b0_ifindex), 12)
    neighbors = [m for m in messages if isinstance(m, codec.NeighMessage)]

    assert sorted(neigh_view(m, names)[:3] for m in neighbors) == sorted(
        (dst, "b0", lladdr) for dst, lladdr, _nud in ENTRIES_B
    )
    assert all(m.nlmsg_flags & codec.NLM_F_DUMP_FILTERED for m in neighbors)


def test_link_dump_matches_ip(table):
    messages = dump(table, codec.encode_link_dump_request(seq=13), 13)
    reference = ip_json("link", "show", netns_name=table)
    links = [m for m in messages if isinstance(m, codec.LinkMessage)]

    assert sorted((m.ifindex, m.ifname) for m in links) == sorted((e["ifindex"], e["ifname"]) for e in reference)
    for link in links:
        entry = next(e for e in reference if e["ifindex"] == link.ifindex)
        assert ":".join(f"{b:02x}" for b in link.address) == entry["address"]
        assert bool(link.ifi_flags & codec.IFF_UP) == ("UP" in entry["flags"])


def test_addr_dump_matches_ip(table):
    messages = dump(table, codec.encode_addr_dump_request(seq=14), 14)
    reference = ip_json("-4", "addr", "show", netns_name=table)
    addresses = [m for m in messages if isinstance(m, codec.AddrMessage)]
    expected = sorted(
        (link["ifindex"], info["local"], info["prefixlen"]) for link in reference for info in link["addr_info"]
    )

    assert sorted((m.ifindex, str(ipaddress.IPv4Address(m.address)), m.prefixlen) for m in addresses) == expected


def test_neigh_event_after_add(table):
    sock = call_in_netns(table, socket.socket, socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.bind((0, 1 << (codec.RTNLGRP_NEIGH - 1)))
        ip("neigh", "add", "198.18.9.30", "lladdr", "02:00:00:00:09:30", "dev", "a0", netns_name=table)
        ip("neigh", "del", "198.18.9.30", "dev", "a0", netns_name=table)
        counters = collections.Counter()
        events = []
        while select.select([sock], [], [], 1)[0]:
            data, (sender_portid, _groups) = sock.recvfrom(1 << 16)
            assert sender_portid == 0
            events.extend(m for m in codec.iter_messages(data, counters) if m.dst == socket.inet_aton("198.18.9.30"))
    finally:
        sock.close()

    assert dict(counters) == {}
    assert events[0].msg_type == codec.RTM_NEWNEIGH
    assert events[0].state == codec.NUD_PERMANENT
    assert events[0].lladdr == bytes.fromhex("020000000930")
    assert events[-1].msg_type == codec.RTM_DELNEIGH
