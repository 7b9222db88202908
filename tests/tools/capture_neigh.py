#!/usr/bin/env python3
"""Capture real rtnetlink datagrams for the codec's unit tests.

Run as root from the repository root:

    .venv/bin/python tests/tools/capture_neigh.py [--out tests/unit/data]

The script builds two network namespaces joined by a veth pair and fills
the first one's neighbor table with entries in many states and flavours.
It records the RTNLGRP_NEIGH events that this causes, dumps the table with
raw netlink requests, and writes every datagram as one hex line. The
namespaces are removed afterwards, also on failure. The output files are
described in README.md next to them.
"""

import argparse
import collections
import json
import logging
import os
import pathlib
import secrets
import select
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from neighbpf import codec, netns  # noqa: E402

log = logging.getLogger("capture_neigh")

NETLINK_EXT_ACK = 11
SOL_NETLINK = 270

# Addresses of the benchmarking ranges (RFC 2544 and RFC 5180), except the
# one link-local entry that the decoder tests need.
LOCAL_IP4 = "198.18.0.1"
PEER_IP4 = "198.18.0.2"
SILENT_IP4 = "198.18.0.99"  # no host replies, so ARP ends INCOMPLETE, then FAILED
LOCAL_IP6 = "2001:2::1"


def run(*argv, check=True):
    log.info("+ %s", " ".join(argv))
    result = subprocess.run(argv, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    if result.returncode != 0:
        log.warning("%s failed, continuing: %s", " ".join(argv), result.stderr.strip())
    return result


def ip(ns, *args, check=True):
    return run("ip", "-n", ns, *args, check=check)


def netlink_socket(ns, groups=0):
    with netns.entered(ns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
    sock.bind((0, groups))
    return sock


def drain(sock, quiet_s=0.5):
    """Return every datagram that arrives until the socket is quiet for quiet_s."""
    datagrams = []
    while select.select([sock], [], [], quiet_s)[0]:
        datagrams.append(sock.recv(1 << 20))
    return datagrams


def request(sock, payload, seq):
    """Send payload and return the datagrams up to NLMSG_DONE or NLMSG_ERROR."""
    sock.send(payload)
    datagrams = []
    while True:
        if not select.select([sock], [], [], 5)[0]:
            raise RuntimeError(f"no reply to netlink request seq {seq} within 5 s")
        data = sock.recv(1 << 20)
        datagrams.append(data)
        for message in codec.iter_messages(data, collections.Counter()):
            if isinstance(message, (codec.DoneMessage, codec.ErrorMessage)) and message.seq == seq:
                return datagrams


def encode_neigh_request(msg_type, flags, seq, family, ifindex, state, attrs):
    body = struct.pack("=BxxxiHBB", family, ifindex, state, 0, 0)
    for nla_type, value in attrs:
        body += struct.pack("=HH", 4 + len(value), nla_type) + value
        body += b"\0" * (-len(value) % 4)
    return struct.pack("=IHHII", 16 + len(body), msg_type, flags, seq, 0) + body


def encode_dump(msg_type, seq, body):
    flags = codec.NLM_F_REQUEST | codec.NLM_F_DUMP
    return struct.pack("=IHHII", 16 + len(body), msg_type, flags, seq, 0) + body


def create_namespaces(ns, peer_ns):
    """Create the two namespaces and the veth pair between them."""
    run("ip", "netns", "add", ns)
    run("ip", "netns", "add", peer_ns)
    ip(ns, "link", "set", "lo", "up")
    ip(ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", peer_ns)
    ip(ns, "addr", "add", f"{LOCAL_IP4}/24", "dev", "v0")
    ip(ns, "addr", "add", f"{LOCAL_IP6}/64", "dev", "v0", "nodad")
    ip(ns, "link", "set", "v0", "up")
    ip(peer_ns, "addr", "add", f"{PEER_IP4}/24", "dev", "v1")
    ip(peer_ns, "addr", "add", "2001:2::2/64", "dev", "v1", "nodad")
    ip(peer_ns, "link", "set", "v1", "up")


def fill_table(ns):
    """Create every kind of neighbor entry that the decoder tests need."""
    # Entries resolved by real ARP and ND: REACHABLE for the peer, and
    # INCOMPLETE, then FAILED after about 3 s, for an address that no host
    # replies to.
    run("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "2", PEER_IP4)
    run("ip", "netns", "exec", ns, "ping", "-6", "-c", "3", "-i", "0.5", "-W", "2", "2001:2::2", check=False)
    run("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", SILENT_IP4, check=False)

    dev = ("dev", "v0")
    ip(ns, "neigh", "add", "198.18.0.10", "lladdr", "02:00:00:00:00:10", *dev, "nud", "permanent")
    ip(ns, "neigh", "add", "198.18.0.11", "lladdr", "02:00:00:00:00:11", *dev, "nud", "stale")
    ip(ns, "neigh", "add", "198.18.0.12", "lladdr", "02:00:00:00:00:12", *dev, "nud", "noarp")
    ip(ns, "neigh", "add", "198.18.0.13", "lladdr", "02:00:00:00:00:13", *dev, "nud", "reachable")
    ip(ns, "neigh", "add", "198.18.0.14", *dev, "nud", "none", check=False)
    ip(ns, "neigh", "add", "198.18.0.15", "lladdr", "02:00:00:00:00:15", *dev, "extern_learn")
    ip(ns, "neigh", "add", "198.18.0.16", "lladdr", "02:00:00:00:00:16", *dev, "nud", "permanent", "router")
    ip(ns, "neigh", "add", "198.18.0.17", "lladdr", "00:00:00:00:00:00", *dev, "nud", "permanent")
    ip(ns, "neigh", "add", "169.254.1.1", "lladdr", "02:00:00:00:01:01", *dev, "nud", "permanent")
    ip(ns, "neigh", "add", "proxy", "198.18.0.20", *dev)
    # A managed entry (NTF_EXT_MANAGED, kernel 5.16 and later) is resolved
    # by the kernel itself. Kernel 6.18 with iproute2 6.1 accepts the first
    # form. NOTE: the fallback with extern_learn and nud none is untested.
    if ip(ns, "neigh", "add", "198.18.0.21", *dev, "managed", check=False).returncode != 0:
        ip(ns, "neigh", "add", "198.18.0.21", *dev, "managed", "extern_learn", "nud", "none", check=False)
    ip(ns, "neigh", "add", "198.18.0.22", "lladdr", "02:00:00:00:00:22", *dev, "nud", "stale")
    ip(ns, "-6", "neigh", "add", "2001:2::10", "lladdr", "02:00:00:00:06:10", *dev, "nud", "permanent")
    ip(ns, "-6", "neigh", "add", "2001:2::11", "lladdr", "02:00:00:00:06:11", *dev, "nud", "stale", "router")

    # A bridge with one veth port and a static fdb record (AF_BRIDGE).
    ip(ns, "link", "add", "br0", "type", "bridge")
    ip(ns, "link", "add", "v2", "type", "veth", "peer", "name", "v3")
    ip(ns, "link", "set", "v2", "master", "br0")
    for link in ("br0", "v2", "v3"):
        ip(ns, "link", "set", link, "up")
    run("bridge", "-n", ns, "fdb", "add", "02:00:00:00:00:30", "dev", "v2", "master", "static")


def capture_requests(ns, out):
    """Dump the table in several ways and send two requests that get ACK and error replies."""
    sock = netlink_socket(ns)
    with netns.entered(ns):
        v0_ifindex = socket.if_nametoindex("v0")
    files = {}
    files["neigh_dump_inet.hex"] = request(sock, codec.encode_neigh_dump_request(101), 101)
    # Read right after the dump, so that the states match it.
    neigh_json = ip(ns, "-j", "neigh", "show", "nud", "all").stdout
    files["neigh_dump_filtered.hex"] = request(sock, codec.encode_neigh_dump_request(102, v0_ifindex), 102)
    files["neigh_dump_unspec.hex"] = request(
        sock, encode_dump(codec.RTM_GETNEIGH, 103, struct.pack("=BxxxiHBB", codec.AF_UNSPEC, 0, 0, 0, 0)), 103
    )
    files["neigh_dump_bridge.hex"] = request(
        sock, encode_dump(codec.RTM_GETNEIGH, 104, struct.pack("=BxxxiHBB", codec.AF_BRIDGE, 0, 0, 0, 0)), 104
    )
    # Proxy entries are dumped only when the request sets ndm_flags to
    # exactly NTF_PROXY (neigh_dump_info in net/core/neighbour.c).
    files["neigh_dump_proxy.hex"] = request(
        sock,
        encode_dump(codec.RTM_GETNEIGH, 109, struct.pack("=BxxxiHBB", codec.AF_INET, 0, 0, codec.NTF_PROXY, 0)),
        109,
    )
    files["link_dump.hex"] = request(sock, codec.encode_link_dump_request(105), 105)
    files["addr_dump.hex"] = request(sock, codec.encode_addr_dump_request(106), 106)

    flags_ack = codec.NLM_F_REQUEST | codec.NLM_F_ACK
    create = flags_ack | 0x400 | 0x200  # NLM_F_CREATE | NLM_F_EXCL
    add_ok = encode_neigh_request(
        codec.RTM_NEWNEIGH, create, 107, codec.AF_INET, v0_ifindex, codec.NUD_PERMANENT,
        [(codec.NDA_DST, socket.inet_aton("198.18.0.40")), (codec.NDA_LLADDR, bytes.fromhex("020000000040"))],
    )
    files["ack.hex"] = request(sock, add_ok, 107)
    # Without NDA_DST the kernel rejects the request with EINVAL and an
    # extended-ack message (neigh_add in net/core/neighbour.c).
    add_bad = encode_neigh_request(codec.RTM_NEWNEIGH, create, 108, codec.AF_INET, v0_ifindex, codec.NUD_PERMANENT, [])
    files["error_extack.hex"] = request(sock, add_bad, 108)
    sock.close()

    with netns.entered(ns):
        ifindexes = {name: socket.if_nametoindex(name) for name in ("lo", "v0", "br0", "v2", "v3")}
    (out / "ifindex.json").write_text(json.dumps(ifindexes, indent=1, sort_keys=True) + "\n")
    (out / "ip_neigh_show.json").write_text(json.dumps(json.loads(neigh_json), indent=1) + "\n")
    return files


def write_hex(path, datagrams):
    with open(path, "w") as f:
        for data in datagrams:
            f.write(data.hex() + "\n")
    log.info("wrote %d datagrams to %s", len(datagrams), path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tests/unit/data", help="directory for the .hex files (default: %(default)s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if os.geteuid() != 0:
        sys.exit("capture_neigh: must run as root to create network namespaces; retry with sudo")

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"{os.getpid()}-{secrets.token_hex(3)}"
    ns, peer_ns = f"nbpfcap-{suffix}", f"nbpfcap-peer-{suffix}"
    try:
        create_namespaces(ns, peer_ns)
        events = netlink_socket(ns, groups=1 << (codec.RTNLGRP_NEIGH - 1))
        fill_table(ns)
        time.sleep(4)  # lets SILENT_IP4 reach FAILED before the dumps
        files = capture_requests(ns, out)

        # Deletions: one entry with ip neigh del, and the stale ones by flush.
        ip(ns, "neigh", "del", "198.18.0.22", "dev", "v0")
        ip(ns, "neigh", "flush", "dev", "v0", "nud", "stale")
        run("bridge", "-n", ns, "fdb", "del", "02:00:00:00:00:30", "dev", "v2", "master")
        files["neigh_events.hex"] = drain(events)
        events.close()

        for name, datagrams in files.items():
            write_hex(out / name, datagrams)
    finally:
        run("ip", "netns", "del", ns, check=False)
        run("ip", "netns", "del", peer_ns, check=False)


if __name__ == "__main__":
    main()
