"""Kernel features that differ between Linux 6.1 (the test VM) and newer hosts.

Each test queries ``neighbpf.features`` whether the running kernel has a
feature, skips with the reason when it does not, and otherwise uses the
feature for real, so a probe that claims too much fails here. The report
test writes every probe's result to the file named by
``NEIGHBPF_FEATURE_REPORT`` (tests/vm/run.sh prints it after the run).
"""

import ctypes
import errno
import json
import os
import secrets
import socket
import struct
import subprocess

import pytest
from pyroute2 import IPRoute

from neighbpf import features, netns

pytestmark = pytest.mark.integration

NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWNEIGH = 28
RTM_GETNEIGH = 30
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NDA_IFINDEX = 8
NTF_EXT_MANAGED = 1 << 0
XDP_ATTACHED_DRV = 1


def ip(*args):
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def namespace():
    name = f"nbfeat{os.getpid()}{secrets.token_hex(3)}"
    ip("netns", "add", name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def two_veth_links(namespace):
    """Return the namespace, with links a0 and b0 holding two and one neighbors."""
    for link, subnet in (("a", "198.18.1"), ("b", "198.18.2")):
        ip("-n", namespace, "link", "add", f"{link}0", "type", "veth", "peer", "name", f"{link}1")
        ip("-n", namespace, "link", "set", f"{link}0", "up")
        ip("-n", namespace, "addr", "add", f"{subnet}.1/24", "dev", f"{link}0")
    for dst, link in (("198.18.1.2", "a0"), ("198.18.1.3", "a0"), ("198.18.2.2", "b0")):
        ip("-n", namespace, "neigh", "add", dst, "lladdr", "02:00:00:00:00:01", "nud", "permanent", "dev", link)
    return namespace


def test_feature_report_written():
    found = features.report()

    assert found["kernel"] == os.uname().release
    probes = dict(found["batch_ops"])
    probes.update({key: value for key, value in found.items() if key not in ("kernel", "batch_ops")})
    for name, value in probes.items():
        expected = int if name == "map_info_size" else bool
        assert isinstance(value, expected), f"probe {name} returned {value!r}"

    path = os.environ.get("NEIGHBPF_FEATURE_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(found, f, sort_keys=True)


@pytest.mark.parametrize("map_type", ["hash", "lpm_trie"])
def test_batch_ops_match_probe(map_type):
    """Write 64 entries with one batch update and read them back with one batch lookup."""
    if not features.has_batch_ops(map_type):
        pytest.skip(f"kernel {os.uname().release} has no batch operations on {map_type} maps "
                    "(hash maps since Linux 5.6, LPM tries since 5.13)")
    count = 64
    keys, key_size = features._batch_keys(map_type, count)
    values = [i.to_bytes(8, "little") for i in range(100, 100 + count)]
    flags = features.BPF_F_NO_PREALLOC if map_type == "lpm_trie" else 0
    fd = features._create_map(features.MAP_TYPES[map_type], key_size, 8, count, flags)
    try:
        key_buffer = ctypes.create_string_buffer(b"".join(keys), key_size * count)
        value_buffer = ctypes.create_string_buffer(b"".join(values), 8 * count)
        update = features._BatchAttr(keys=ctypes.addressof(key_buffer), values=ctypes.addressof(value_buffer),
                                     count=count, map_fd=fd)
        result, err = features._bpf(features.BPF_MAP_UPDATE_BATCH, update)
        assert result == 0, f"BPF_MAP_UPDATE_BATCH failed with errno {err}"
        assert update.count == count

        out_keys = ctypes.create_string_buffer(key_size * count)
        out_values = ctypes.create_string_buffer(8 * count)
        out_batch = ctypes.create_string_buffer(max(key_size, 8))
        lookup = features._BatchAttr(out_batch=ctypes.addressof(out_batch), keys=ctypes.addressof(out_keys),
                                     values=ctypes.addressof(out_values), count=count, map_fd=fd)
        result, err = features._bpf(features.BPF_MAP_LOOKUP_BATCH, lookup)
        # ENOENT ends a batch lookup that reached the last entry.
        assert result == 0 or err == errno.ENOENT, f"BPF_MAP_LOOKUP_BATCH failed with errno {err}"
        assert lookup.count == count
        read = {out_keys.raw[i * key_size:(i + 1) * key_size]: out_values.raw[i * 8:(i + 1) * 8]
                for i in range(lookup.count)}
        assert read == dict(zip(keys, values))
    finally:
        os.close(fd)


def _dump_neighbors(sock, ifindex=0, ndm_pad1=0):
    """Send RTM_GETNEIGH for AF_INET; return (ifindexes of the replies, errno)."""
    ndmsg = struct.pack("=BBHiHBB", socket.AF_INET, ndm_pad1, 0, 0, 0, 0, 0)
    attrs = struct.pack("=HHI", 8, NDA_IFINDEX, ifindex) if ifindex else b""
    body = ndmsg + attrs
    sock.send(struct.pack("=IHHII", 16 + len(body), RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body)

    ifindexes = []
    while True:
        data = sock.recv(65536)
        offset = 0
        while offset < len(data):
            length, msg_type = struct.unpack_from("=IH", data, offset)
            # A dump that fails reports its error in the int that follows
            # the NLMSG_DONE header, not in NLMSG_ERROR.
            if msg_type in (NLMSG_DONE, NLMSG_ERROR):
                (error,) = struct.unpack_from("=i", data, offset + 16)
                return ifindexes, -error
            if msg_type == RTM_NEWNEIGH:
                (msg_ifindex,) = struct.unpack_from("=i", data, offset + 16 + 4)
                ifindexes.append(msg_ifindex)
            offset += (length + 3) & ~3


def test_strict_check_filters_neighbor_dump(two_veth_links):
    if not features.has_strict_check():
        pytest.skip(f"kernel {os.uname().release} has no NETLINK_GET_STRICT_CHK (Linux 4.20)")
    with netns.entered(two_veth_links):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        a0 = socket.if_nametoindex("a0")
    try:
        sock.setsockopt(features.SOL_NETLINK, features.NETLINK_GET_STRICT_CHK, 1)
        sock.bind((0, 0))

        ifindexes, err = _dump_neighbors(sock, ifindex=a0)
        assert err == 0
        assert ifindexes == [a0, a0]

        # Strict checking rejects a dump request whose padding is not zero
        # (neigh_valid_dump_req() in net/core/neighbour.c).
        _, err = _dump_neighbors(sock, ndm_pad1=1)
        assert err == errno.EINVAL
    finally:
        sock.close()


def test_managed_neighbor_flag_in_dump(namespace):
    if not features.has_managed_neighbors():
        pytest.skip(f"kernel {os.uname().release} has no managed neighbors (NTF_EXT_MANAGED, Linux 5.16)")
    ip("-n", namespace, "link", "add", "m0", "type", "veth", "peer", "name", "m1")
    ip("-n", namespace, "link", "set", "m0", "up")
    ip("-n", namespace, "addr", "add", "198.18.3.1/24", "dev", "m0")
    ip("-n", namespace, "neigh", "add", "198.18.3.2", "dev", "m0", "managed")

    with netns.entered(namespace):
        ipr = IPRoute()
    try:
        entries = [n for n in ipr.get_neighbours(family=socket.AF_INET) if n.get_attr("NDA_DST") == "198.18.3.2"]
    finally:
        ipr.close()

    assert len(entries) == 1
    flags_ext = entries[0].get_attr("NDA_FLAGS_EXT")
    assert flags_ext is not None
    assert flags_ext & NTF_EXT_MANAGED
    # A managed entry carries no MAC until the kernel resolves it; the
    # ingest rules remove such an entry from the map.
    assert entries[0].get_attr("NDA_LLADDR") is None


def test_xdp_native_mode_on_veth(namespace):
    if not features.has_xdp_native_veth():
        pytest.skip(f"kernel {os.uname().release} rejects native XDP on veth (Linux 4.19 added it)")
    ip("-n", namespace, "link", "add", "x0", "type", "veth", "peer", "name", "x1")
    prog_fd = features._load_xdp_pass()
    try:
        assert features._attach_xdp_native(namespace, "x0", prog_fd)
    finally:
        os.close(prog_fd)

    (link,) = json.loads(ip("-n", namespace, "-j", "-d", "link", "show", "dev", "x0"))
    assert link["xdp"]["mode"] == XDP_ATTACHED_DRV


def test_map_info_size_covers_known_fields():
    size = features.map_info_size()

    # 80 bytes end at btf_value_type_id and its padding, the layout before
    # map_extra was appended. Linux 6.1 fills 88 bytes.
    assert size >= 80
    assert features.has_map_info_map_extra() == (size >= features.MAP_INFO_MAP_EXTRA_END)
