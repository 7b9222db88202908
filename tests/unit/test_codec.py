"""Tests of neighbpf.codec on real captured bytes and on hand-built messages.

Every neighbor message that the codec decodes without error is also
decoded by pyroute2's ndmsg, and the two views must agree.
"""

import collections
import errno
import json
import socket
import struct

import pytest

from neighbpf import codec
from neighbpf.errors import DecodeError
from netlink_bytes import (
    DATA_DIR,
    Pyroute2Ndmsg,
    codec_view,
    done,
    error,
    load_hex,
    neigh,
    nla,
    nlmsg,
    pyroute2_view,
    split_messages,
)

pytestmark = pytest.mark.unit

MAC = b"\x02\x00\x00\x00\x00\x05"
DST = b"\xc6\x12\x00\x05"  # 198.18.0.5
NEIGH_TYPES = (codec.RTM_NEWNEIGH, codec.RTM_DELNEIGH, codec.RTM_GETNEIGH)


def expected_neigh(**fields):
    """Return the NeighMessage that neigh(**same fields) decodes to."""
    defaults = dict(
        msg_type=codec.RTM_NEWNEIGH,
        nlmsg_flags=0,
        seq=0,
        portid=0,
        family=codec.AF_INET,
        ifindex=2,
        state=codec.NUD_REACHABLE,
        flags=0,
        ndm_type=codec.RTN_UNICAST,
        dst=DST,
        lladdr=MAC,
        flags_ext=0,
    )
    defaults.update(fields)
    return codec.NeighMessage(**defaults)


def decode_all(datagrams):
    counters = collections.Counter()
    messages = []
    for datagram in datagrams:
        messages.extend(codec.iter_messages(datagram, counters))
    return messages, counters


def ipv4(text):
    return socket.inet_aton(text)


# ---------------------------------------------------------------------------
# Hand-built cases: (id, datagram, expected messages, expected counters)

NEIGH_REQUEST = neigh(msg_type=codec.RTM_NEWNEIGH, dst=None, lladdr=None, nlmsg_flags=codec.NLM_F_REQUEST, seq=9)
LLADDR_4 = b"\xc6\x12\x07\x07"
LLADDR_16 = bytes(range(16))
LLADDR_20 = bytes(range(20))
MULTICAST_DST = ipv4("224.0.0.22")
MULTICAST_MAC = b"\x01\x00\x5e\x00\x00\x16"
DST6 = socket.inet_pton(socket.AF_INET6, "2001:2::10")
LINK_LOCAL_DST = ipv4("169.254.1.1")
UNKNOWN_ATTRS = nla(200, b"abc") + nla(codec.NDA_VLAN | codec.NLA_F_NESTED, nla(1, b"\x01\x00"))
RTM_NEWROUTE = 24

CASES = [
    (
        "delete without lladdr",
        neigh(msg_type=codec.RTM_DELNEIGH, state=codec.NUD_STALE, lladdr=None),
        [expected_neigh(msg_type=codec.RTM_DELNEIGH, state=codec.NUD_STALE, lladdr=None)],
        {},
    ),
    (
        "state failed",
        neigh(state=codec.NUD_FAILED, lladdr=None),
        [expected_neigh(state=codec.NUD_FAILED, lladdr=None)],
        {},
    ),
    (
        "state incomplete",
        neigh(state=codec.NUD_INCOMPLETE, lladdr=None),
        [expected_neigh(state=codec.NUD_INCOMPLETE, lladdr=None)],
        {},
    ),
    (
        "state none",
        neigh(state=codec.NUD_NONE, lladdr=None),
        [expected_neigh(state=codec.NUD_NONE, lladdr=None)],
        {},
    ),
    (
        "proxy record",
        neigh(state=codec.NUD_NONE, flags=codec.NTF_PROXY, lladdr=None),
        [expected_neigh(state=codec.NUD_NONE, flags=codec.NTF_PROXY, lladdr=None)],
        {},
    ),
    (
        "multicast type",
        neigh(state=codec.NUD_NOARP, ndm_type=codec.RTN_MULTICAST, dst=MULTICAST_DST, lladdr=MULTICAST_MAC),
        [
            expected_neigh(
                state=codec.NUD_NOARP, ndm_type=codec.RTN_MULTICAST, dst=MULTICAST_DST, lladdr=MULTICAST_MAC
            )
        ],
        {},
    ),
    (
        "odd lladdr sizes mid dump",
        neigh(nlmsg_flags=codec.NLM_F_MULTI, seq=7)
        + neigh(lladdr=LLADDR_4, nlmsg_flags=codec.NLM_F_MULTI, seq=7)
        + neigh(lladdr=LLADDR_16, nlmsg_flags=codec.NLM_F_MULTI, seq=7)
        + neigh(dst=ipv4("198.18.0.6"), nlmsg_flags=codec.NLM_F_MULTI, seq=7)
        + done(seq=7),
        [
            expected_neigh(nlmsg_flags=codec.NLM_F_MULTI, seq=7),
            expected_neigh(lladdr=LLADDR_4, nlmsg_flags=codec.NLM_F_MULTI, seq=7),
            expected_neigh(lladdr=LLADDR_16, nlmsg_flags=codec.NLM_F_MULTI, seq=7),
            expected_neigh(dst=ipv4("198.18.0.6"), nlmsg_flags=codec.NLM_F_MULTI, seq=7),
            codec.DoneMessage(codec.NLM_F_MULTI, 7, 0, 0, ""),
        ],
        {},
    ),
    (
        "three messages and done",
        neigh(seq=3, dst=ipv4("198.18.0.1"))
        + neigh(seq=3, dst=ipv4("198.18.0.2"))
        + neigh(seq=3, dst=ipv4("198.18.0.3"))
        + done(seq=3),
        [
            expected_neigh(seq=3, dst=ipv4("198.18.0.1")),
            expected_neigh(seq=3, dst=ipv4("198.18.0.2")),
            expected_neigh(seq=3, dst=ipv4("198.18.0.3")),
            codec.DoneMessage(codec.NLM_F_MULTI, 3, 0, 0, ""),
        ],
        {},
    ),
    (
        "truncated attribute header",
        # Two bytes of an attribute header at the end of the message body.
        nlmsg(codec.RTM_NEWNEIGH, neigh()[16:] + b"\x08\x00")
        + neigh(dst=ipv4("198.18.0.6")),
        [expected_neigh(dst=ipv4("198.18.0.6"))],
        {"malformed_attr_truncated": 1},
    ),
    (
        "truncated attribute value",
        # NDA_LLADDR declares 6 bytes of value but the message ends after 2.
        nlmsg(codec.RTM_NEWNEIGH, neigh(lladdr=None)[16:] + struct.pack("=HH", 10, codec.NDA_LLADDR) + b"\x02\x00")
        + neigh(dst=ipv4("198.18.0.6")),
        [expected_neigh(dst=ipv4("198.18.0.6"))],
        {"malformed_attr_overrun": 1},
    ),
    (
        "nla_len below 4",
        neigh(extra=nla(codec.NDA_PROBES, b"", nla_len=2)) + neigh(dst=ipv4("198.18.0.6")),
        [expected_neigh(dst=ipv4("198.18.0.6"))],
        {"malformed_attr_len": 1},
    ),
    (
        "nla_len zero",
        neigh(extra=nla(codec.NDA_PROBES, b"", nla_len=0)),
        [],
        {"malformed_attr_len": 1},
    ),
    (
        "attribute past message",
        neigh(lladdr=None, extra=nla(codec.NDA_LLADDR, MAC, nla_len=64)) + neigh(dst=ipv4("198.18.0.6")),
        [expected_neigh(dst=ipv4("198.18.0.6"))],
        {"malformed_attr_overrun": 1},
    ),
    (
        "dst of 16 bytes with AF_INET",
        neigh(dst=DST6) + neigh(dst=ipv4("198.18.0.6")),
        [expected_neigh(dst=ipv4("198.18.0.6"))],
        {"malformed_dst_len": 1},
    ),
    (
        "dst of 3 bytes with AF_INET",
        neigh(dst=b"\xc6\x12\x00"),
        [],
        {"malformed_dst_len": 1},
    ),
    (
        "truncated ndmsg",
        nlmsg(codec.RTM_NEWNEIGH, b"\x02\x00\x00\x00\x02\x00\x00\x00") + neigh(),
        [expected_neigh()],
        {"malformed_header_truncated": 1},
    ),
    (
        "flags_ext of 2 bytes",
        neigh(extra=nla(codec.NDA_FLAGS_EXT, b"\x01\x00")),
        [],
        {"malformed_flags_ext_len": 1},
    ),
    (
        "error with extack",
        error(-errno.EINVAL, NEIGH_REQUEST, seq=9, extack="Network address not specified"),
        [codec.ErrorMessage(codec.NLM_F_ACK_TLVS, 9, 0, errno.EINVAL, "Network address not specified")],
        {},
    ),
    (
        "capped error with extack",
        error(-errno.EEXIST, NEIGH_REQUEST, seq=9, extack="exists", capped=True),
        [codec.ErrorMessage(codec.NLM_F_ACK_TLVS | codec.NLM_F_CAPPED, 9, 0, errno.EEXIST, "exists")],
        {},
    ),
    (
        "error with malformed extack",
        # An NLMSGERR_ATTR_MSG attribute with nla_len 2.
        nlmsg(
            codec.NLMSG_ERROR,
            struct.pack("=i", -errno.EINVAL) + NEIGH_REQUEST + struct.pack("=HH", 2, codec.NLMSGERR_ATTR_MSG),
            flags=codec.NLM_F_ACK_TLVS,
            seq=9,
        ),
        [codec.ErrorMessage(codec.NLM_F_ACK_TLVS, 9, 0, errno.EINVAL, "")],
        {},
    ),
    (
        "error with echoed request past message",
        nlmsg(
            codec.NLMSG_ERROR,
            struct.pack("=i", -errno.EINVAL) + struct.pack("=IHHII", 4000, codec.RTM_NEWNEIGH, 5, 9, 0),
            flags=codec.NLM_F_ACK_TLVS,
            seq=9,
        ),
        [codec.ErrorMessage(codec.NLM_F_ACK_TLVS, 9, 0, errno.EINVAL, "")],
        {},
    ),
    (
        "truncated error",
        nlmsg(codec.NLMSG_ERROR, struct.pack("=i", -errno.EINVAL), seq=9) + neigh(),
        [expected_neigh()],
        {"malformed_header_truncated": 1},
    ),
    (
        "ack",
        error(0, NEIGH_REQUEST, seq=9, capped=True),
        [codec.ErrorMessage(codec.NLM_F_CAPPED, 9, 0, 0, "")],
        {},
    ),
    (
        "done with negative error",
        done(error=-errno.EBUSY, seq=4),
        [codec.DoneMessage(codec.NLM_F_MULTI, 4, 0, errno.EBUSY, "")],
        {},
    ),
    (
        "done without errno",
        nlmsg(codec.NLMSG_DONE, b"", flags=codec.NLM_F_MULTI, seq=4),
        [codec.DoneMessage(codec.NLM_F_MULTI, 4, 0, 0, "")],
        {},
    ),
    (
        "done with extack",
        done(error=-errno.EINVAL, seq=4, extack="Invalid values in header for neighbor dump request"),
        [
            codec.DoneMessage(
                codec.NLM_F_MULTI | codec.NLM_F_ACK_TLVS,
                4,
                0,
                errno.EINVAL,
                "Invalid values in header for neighbor dump request",
            )
        ],
        {},
    ),
    (
        "dump_intr preserved",
        neigh(nlmsg_flags=codec.NLM_F_MULTI | codec.NLM_F_DUMP_INTR, seq=5)
        + done(flags=codec.NLM_F_MULTI | codec.NLM_F_DUMP_INTR, seq=5),
        [
            expected_neigh(nlmsg_flags=codec.NLM_F_MULTI | codec.NLM_F_DUMP_INTR, seq=5),
            codec.DoneMessage(codec.NLM_F_MULTI | codec.NLM_F_DUMP_INTR, 5, 0, 0, ""),
        ],
        {},
    ),
    (
        "AF_BRIDGE fdb record",
        neigh(
            family=codec.AF_BRIDGE,
            ifindex=5,
            state=codec.NUD_PERMANENT,
            flags=codec.NTF_SELF,
            ndm_type=codec.RTN_UNSPEC,
            dst=None,
            flags_ext=0,
        ),
        [
            expected_neigh(
                family=codec.AF_BRIDGE,
                ifindex=5,
                state=codec.NUD_PERMANENT,
                flags=codec.NTF_SELF,
                ndm_type=codec.RTN_UNSPEC,
                dst=None,
            )
        ],
        {},
    ),
    (
        "AF_INET6 record",
        neigh(family=codec.AF_INET6, dst=DST6, flags=codec.NTF_ROUTER),
        [expected_neigh(family=codec.AF_INET6, dst=DST6, flags=codec.NTF_ROUTER)],
        {},
    ),
    (
        "RTM_GETNEIGH",
        neigh(msg_type=codec.RTM_GETNEIGH, state=codec.NUD_INCOMPLETE, lladdr=None),
        [expected_neigh(msg_type=codec.RTM_GETNEIGH, state=codec.NUD_INCOMPLETE, lladdr=None)],
        {},
    ),
    (
        "sender portid preserved",
        neigh(portid=4242, seq=17),
        [expected_neigh(portid=4242, seq=17)],
        {},
    ),
    (
        "lladdr of 0 bytes",
        neigh(lladdr=b""),
        [expected_neigh(lladdr=b"")],
        {},
    ),
    (
        "lladdr of 4 bytes",
        neigh(lladdr=LLADDR_4),
        [expected_neigh(lladdr=LLADDR_4)],
        {},
    ),
    (
        "lladdr of 16 bytes",
        neigh(lladdr=LLADDR_16),
        [expected_neigh(lladdr=LLADDR_16)],
        {},
    ),
    (
        "lladdr of 20 bytes",
        neigh(lladdr=LLADDR_20),
        [expected_neigh(lladdr=LLADDR_20)],
        {},
    ),
    (
        "ext_learned and router flags",
        neigh(state=codec.NUD_STALE, flags=codec.NTF_EXT_LEARNED | codec.NTF_ROUTER),
        [expected_neigh(state=codec.NUD_STALE, flags=codec.NTF_EXT_LEARNED | codec.NTF_ROUTER)],
        {},
    ),
    (
        "managed in flags_ext",
        neigh(state=codec.NUD_REACHABLE, flags_ext=codec.NTF_EXT_MANAGED),
        [expected_neigh(state=codec.NUD_REACHABLE, flags_ext=codec.NTF_EXT_MANAGED)],
        {},
    ),
    (
        "link-local dst",
        neigh(dst=LINK_LOCAL_DST, state=codec.NUD_PERMANENT),
        [expected_neigh(dst=LINK_LOCAL_DST, state=codec.NUD_PERMANENT)],
        {},
    ),
    (
        "unknown attributes skipped",
        neigh(extra=UNKNOWN_ATTRS),
        [expected_neigh()],
        {},
    ),
    (
        "unknown message type",
        nlmsg(RTM_NEWROUTE, b"\x02" + bytes(11)) + neigh(),
        [expected_neigh()],
        {"unknown_type": 1},
    ),
    (
        "noop skipped",
        nlmsg(codec.NLMSG_NOOP, b"") + neigh(),
        [expected_neigh()],
        {},
    ),
    (
        "overrun counted",
        nlmsg(codec.NLMSG_OVERRUN, b"") + neigh(),
        [expected_neigh()],
        {"overrun": 1},
    ),
    (
        "nlmsg_len below header",
        neigh() + nlmsg(codec.RTM_NEWNEIGH, b"", nlmsg_len=8) + neigh(),
        [expected_neigh()],
        {"malformed_nlmsg_len": 1},
    ),
    (
        "nlmsg_len past datagram",
        neigh() + neigh()[:40],
        [expected_neigh()],
        {"malformed_nlmsg_len": 1},
    ),
    (
        "trailing bytes after message",
        neigh() + b"\x00" * 8,
        [expected_neigh()],
        {"malformed_nlmsg_truncated": 1},
    ),
    (
        "unaligned nlmsg_len",
        # The last attribute has 1 byte of value and no padding counted in
        # nlmsg_len, so the next message starts at the aligned offset.
        nlmsg(codec.RTM_NEWNEIGH, neigh()[16:] + struct.pack("=HHB", 5, 200, 7))
        + neigh(dst=ipv4("198.18.0.6")),
        [expected_neigh(), expected_neigh(dst=ipv4("198.18.0.6"))],
        {},
    ),
    (
        "empty datagram",
        b"",
        [],
        {},
    ),
]

CASE_IDS = [case[0] for case in CASES]


@pytest.mark.parametrize("name, datagram, expected_messages, expected_counters", CASES, ids=CASE_IDS)
def test_iter_messages_case(name, datagram, expected_messages, expected_counters):
    counters = collections.Counter()

    messages = list(codec.iter_messages(datagram, counters))

    assert messages == expected_messages
    assert dict(counters) == expected_counters


@pytest.mark.parametrize("name, datagram, expected_messages, expected_counters", CASES, ids=CASE_IDS)
def test_iter_messages_memoryview(name, datagram, expected_messages, expected_counters):
    counters = collections.Counter()

    messages = list(codec.iter_messages(memoryview(datagram), counters))

    assert messages == expected_messages
    assert dict(counters) == expected_counters
    for message in messages:
        for value in message:
            assert not isinstance(value, memoryview)


VALID_CASES = [case for case in CASES if not case[3]]


@pytest.mark.parametrize(
    "name, datagram, expected_messages, expected_counters", VALID_CASES, ids=[case[0] for case in VALID_CASES]
)
def test_hand_built_agrees_with_pyroute2(name, datagram, expected_messages, expected_counters):
    decoded = [m for m in codec.iter_messages(datagram, collections.Counter()) if isinstance(m, codec.NeighMessage)]
    raw = [data for msg_type, data in split_messages(datagram) if msg_type in NEIGH_TYPES]

    assert len(decoded) == len(raw)
    for message, message_bytes in zip(decoded, raw):
        assert codec_view(message) == pyroute2_view(message_bytes)


# ---------------------------------------------------------------------------
# decode_neigh called directly


def test_decode_neigh_offsets():
    datagram = b"\xff" * 8 + neigh(portid=7)
    body_len = len(neigh(portid=7)) - 16

    message = codec.decode_neigh(datagram, 8 + 16, body_len, codec.RTM_NEWNEIGH, 0, 1, 7)

    assert message == expected_neigh(seq=1, portid=7)


@pytest.mark.parametrize(
    "offset, length, reason",
    [
        (16, 8, "header_truncated"),
        (-4, 40, "header_truncated"),
        (16, 1000, "header_truncated"),
    ],
)
def test_decode_neigh_bad_bounds(offset, length, reason):
    with pytest.raises(DecodeError) as excinfo:
        codec.decode_neigh(neigh(), offset, length, codec.RTM_NEWNEIGH, 0, 0, 0)

    assert excinfo.value.reason == reason


def test_decode_neigh_reason_dst_len():
    datagram = neigh(dst=DST6)

    with pytest.raises(DecodeError) as excinfo:
        codec.decode_neigh(datagram, 16, len(datagram) - 16, codec.RTM_NEWNEIGH, 0, 0, 0)

    assert excinfo.value.reason == "dst_len"


# ---------------------------------------------------------------------------
# Real bytes captured from Linux 6.18 by tests/tools/capture_neigh.py

NEIGH_FILES = [
    "neigh_dump_inet.hex",
    "neigh_dump_filtered.hex",
    "neigh_dump_unspec.hex",
    "neigh_dump_bridge.hex",
    "neigh_dump_proxy.hex",
    "neigh_events.hex",
]


@pytest.fixture(scope="module")
def ifindex_by_name():
    return json.loads((DATA_DIR / "ifindex.json").read_text())


@pytest.mark.parametrize("name", NEIGH_FILES)
def test_captured_agrees_with_pyroute2(name):
    datagrams = load_hex(name)
    messages, counters = decode_all(datagrams)
    decoded = [m for m in messages if isinstance(m, codec.NeighMessage)]
    raw = [data for datagram in datagrams for msg_type, data in split_messages(datagram) if msg_type in NEIGH_TYPES]

    assert dict(counters) == {}
    assert len(decoded) > 0
    assert len(decoded) == len(raw)
    for message, message_bytes in zip(decoded, raw):
        assert codec_view(message) == pyroute2_view(message_bytes)


@pytest.mark.parametrize(
    "name, seq",
    [
        ("neigh_dump_inet.hex", 101),
        ("neigh_dump_filtered.hex", 102),
        ("neigh_dump_unspec.hex", 103),
        ("neigh_dump_bridge.hex", 104),
        ("neigh_dump_proxy.hex", 109),
        ("link_dump.hex", 105),
        ("addr_dump.hex", 106),
    ],
)
def test_captured_dump_ends_with_done(name, seq):
    messages, counters = decode_all(load_hex(name))

    assert dict(counters) == {}
    assert messages[-1] == codec.DoneMessage(codec.NLM_F_MULTI, seq, messages[-1].portid, 0, "")
    assert all(m.seq == seq for m in messages)
    assert all(m.portid == messages[-1].portid for m in messages)
    assert all(m.nlmsg_flags & codec.NLM_F_MULTI for m in messages)


def test_captured_inet_dump_matches_ip(ifindex_by_name):
    messages, _ = decode_all(load_hex("neigh_dump_inet.hex"))
    decoded = {
        (m.ifindex, socket.inet_ntop(socket.AF_INET, m.dst)): m for m in messages if isinstance(m, codec.NeighMessage)
    }
    reference = json.loads((DATA_DIR / "ip_neigh_show.json").read_text())
    reference_inet = [entry for entry in reference if ":" not in entry["dst"]]

    assert len(decoded) == len(reference_inet)
    for entry in reference_inet:
        message = decoded[(ifindex_by_name[entry["dev"]], entry["dst"])]
        assert message.family == codec.AF_INET
        lladdr_text = ":".join(f"{b:02x}" for b in message.lladdr) if message.lladdr is not None else None
        assert lladdr_text == entry.get("lladdr")
        expected_state = entry.get("state", ["NONE"])
        assert codec.nud_state_names(message.state) == expected_state
        assert bool(message.flags & codec.NTF_ROUTER) == ("router" in entry)
        assert bool(message.flags & codec.NTF_EXT_LEARNED) == ("extern_learn" in entry)
        assert bool(message.flags_ext & codec.NTF_EXT_MANAGED) == ("managed" in entry)


def captured_inet_entry(dst_text):
    messages, _ = decode_all(load_hex("neigh_dump_inet.hex"))
    for message in messages:
        if isinstance(message, codec.NeighMessage) and message.dst == ipv4(dst_text):
            return message
    raise AssertionError(f"{dst_text} not in neigh_dump_inet.hex")


@pytest.mark.parametrize(
    "dst_text, state, flags, flags_ext, lladdr",
    [
        ("198.18.0.10", codec.NUD_PERMANENT, 0, 0, bytes.fromhex("020000000010")),
        ("198.18.0.11", codec.NUD_STALE, 0, 0, bytes.fromhex("020000000011")),
        ("198.18.0.12", codec.NUD_NOARP, 0, 0, bytes.fromhex("020000000012")),
        ("198.18.0.13", codec.NUD_REACHABLE, 0, 0, bytes.fromhex("020000000013")),
        ("198.18.0.14", codec.NUD_NONE, 0, 0, None),
        ("198.18.0.15", codec.NUD_PERMANENT, codec.NTF_EXT_LEARNED, 0, bytes.fromhex("020000000015")),
        ("198.18.0.16", codec.NUD_PERMANENT, codec.NTF_ROUTER, 0, bytes.fromhex("020000000016")),
        ("198.18.0.17", codec.NUD_PERMANENT, 0, 0, bytes(6)),
        ("198.18.0.21", codec.NUD_FAILED, 0, codec.NTF_EXT_MANAGED, None),
        ("198.18.0.99", codec.NUD_FAILED, 0, 0, None),
        ("169.254.1.1", codec.NUD_PERMANENT, 0, 0, bytes.fromhex("020000000101")),
    ],
)
def test_captured_entry_fields(dst_text, state, flags, flags_ext, lladdr):
    message = captured_inet_entry(dst_text)

    assert message.msg_type == codec.RTM_NEWNEIGH
    assert message.ifindex == 2
    assert message.ndm_type == codec.RTN_UNICAST
    assert message.state == state
    assert message.flags == flags
    assert message.flags_ext == flags_ext
    assert message.lladdr == lladdr


def test_captured_multicast_entry():
    message = captured_inet_entry("224.0.0.22")

    assert message.ndm_type == codec.RTN_MULTICAST
    assert message.state == codec.NUD_NOARP
    assert message.lladdr == bytes.fromhex("01005e000016")


def test_captured_filtered_dump(ifindex_by_name):
    messages, _ = decode_all(load_hex("neigh_dump_filtered.hex"))
    neighbors = [m for m in messages if isinstance(m, codec.NeighMessage)]

    assert len(neighbors) == 13
    assert {m.ifindex for m in neighbors} == {ifindex_by_name["v0"]}
    assert all(m.nlmsg_flags & codec.NLM_F_DUMP_FILTERED for m in neighbors)


def test_captured_proxy_entry():
    messages, _ = decode_all(load_hex("neigh_dump_proxy.hex"))

    assert messages[0].dst == ipv4("198.18.0.20")
    assert messages[0].flags == codec.NTF_PROXY
    assert messages[0].lladdr is None


def test_captured_families():
    unspec, _ = decode_all(load_hex("neigh_dump_unspec.hex"))
    bridge, _ = decode_all(load_hex("neigh_dump_bridge.hex"))
    inet6 = [m for m in unspec if isinstance(m, codec.NeighMessage) and m.family == codec.AF_INET6]
    fdb = [m for m in bridge if isinstance(m, codec.NeighMessage)]

    assert socket.inet_pton(socket.AF_INET6, "2001:2::10") in {m.dst for m in inet6}
    assert all(len(m.dst) == 16 for m in inet6)
    assert all(m.family == codec.AF_BRIDGE for m in fdb)
    assert all(m.dst is None for m in fdb)
    assert bytes.fromhex("020000000030") in {m.lladdr for m in fdb}


def test_captured_events():
    messages, counters = decode_all(load_hex("neigh_events.hex"))
    inet = [m for m in messages if m.family == codec.AF_INET]
    deleted = {socket.inet_ntop(socket.AF_INET, m.dst) for m in inet if m.msg_type == codec.RTM_DELNEIGH}
    added = {socket.inet_ntop(socket.AF_INET, m.dst) for m in inet if m.msg_type == codec.RTM_NEWNEIGH}

    assert dict(counters) == {}
    assert deleted == {"198.18.0.22", "198.18.0.11", "198.18.0.15"}
    assert {"198.18.0.2", "198.18.0.10", "198.18.0.99", "169.254.1.1"} <= added
    assert all(m.seq == 0 for m in messages)
    for message in messages:
        if message.msg_type == codec.RTM_DELNEIGH:
            assert message.portid == 0
            if message.family == codec.AF_INET:
                assert message.lladdr is None


def test_captured_event_portid_of_requester():
    # Events raised by ARP carry nlmsg_pid 0, but an event caused by
    # `ip neigh add` carries the port id of the ip command's socket.
    messages, _ = decode_all(load_hex("neigh_events.hex"))
    by_dst = {m.dst: m for m in messages if m.family == codec.AF_INET and m.msg_type == codec.RTM_NEWNEIGH}

    assert by_dst[ipv4("198.18.0.2")].portid == 0
    assert by_dst[ipv4("198.18.0.10")].portid != 0


def test_captured_ack():
    messages, counters = decode_all(load_hex("ack.hex"))

    assert dict(counters) == {}
    assert messages == [codec.ErrorMessage(codec.NLM_F_CAPPED, 107, messages[0].portid, 0, "")]


def test_captured_error_extack():
    messages, counters = decode_all(load_hex("error_extack.hex"))

    assert dict(counters) == {}
    assert messages == [
        codec.ErrorMessage(
            codec.NLM_F_ACK_TLVS, 108, messages[0].portid, errno.EINVAL, "Network address not specified"
        )
    ]


def test_captured_link_dump(ifindex_by_name):
    messages, counters = decode_all(load_hex("link_dump.hex"))
    links = {m.ifname: m for m in messages if isinstance(m, codec.LinkMessage)}

    assert dict(counters) == {}
    assert {name: m.ifindex for name, m in links.items()} == ifindex_by_name
    assert links["lo"].address == bytes(6)
    assert links["v0"].ifi_flags & codec.IFF_UP
    assert links["v0"].ifi_flags & codec.IFF_LOWER_UP
    assert len(links["v0"].address) == 6


def test_captured_addr_dump(ifindex_by_name):
    messages, counters = decode_all(load_hex("addr_dump.hex"))
    addresses = {(m.ifindex, m.address, m.prefixlen) for m in messages if isinstance(m, codec.AddrMessage)}

    assert dict(counters) == {}
    assert addresses == {
        (ifindex_by_name["lo"], ipv4("127.0.0.1"), 8),
        (ifindex_by_name["v0"], ipv4("198.18.0.1"), 24),
    }


# ---------------------------------------------------------------------------
# Encoders


def test_neigh_dump_request_fields():
    request = codec.encode_neigh_dump_request(seq=77)

    assert len(request) == 28
    nlmsg_len, nlmsg_type, nlmsg_flags, seq, portid = struct.unpack_from("=IHHII", request, 0)
    assert nlmsg_len == 28
    assert nlmsg_type == codec.RTM_GETNEIGH
    assert nlmsg_flags == codec.NLM_F_REQUEST | codec.NLM_F_DUMP
    assert nlmsg_flags == 0x301
    assert seq == 77
    assert portid == 0
    family, pad1, pad2, ifindex, state, flags, ndm_type = struct.unpack_from("=BBHiHBB", request, 16)
    assert family == codec.AF_INET
    assert (pad1, pad2, ifindex, state, flags, ndm_type) == (0, 0, 0, 0, 0, 0)


def test_neigh_dump_request_ifindex():
    request = codec.encode_neigh_dump_request(seq=78, ifindex=5)

    assert len(request) == 36
    assert struct.unpack_from("=I", request, 0)[0] == 36
    assert struct.unpack_from("=i", request, 20)[0] == 0
    nla_len, nla_type, value = struct.unpack_from("=HHI", request, 28)
    assert nla_len == 8
    assert nla_type == codec.NDA_IFINDEX
    assert value == 5


def test_link_dump_request_fields():
    request = codec.encode_link_dump_request(seq=79)

    assert struct.unpack_from("=IHHII", request, 0) == (32, codec.RTM_GETLINK, 0x301, 79, 0)
    assert request[16:] == bytes(16)


@pytest.mark.parametrize("family", [codec.AF_INET, codec.AF_INET6])
def test_addr_dump_request_fields(family):
    request = codec.encode_addr_dump_request(seq=80, family=family)

    assert struct.unpack_from("=IHHII", request, 0) == (24, codec.RTM_GETADDR, 0x301, 80, 0)
    assert request[16] == family
    assert request[17:] == bytes(7)


def test_dump_request_agrees_with_pyroute2():
    request = codec.encode_neigh_dump_request(seq=81, ifindex=3)

    assert pyroute2_view(request) == (codec.RTM_GETNEIGH, 0x301, 81, 0, codec.AF_INET, 0, 0, 0, 0, None, None, 0)
    message = Pyroute2Ndmsg(request)
    message.decode()
    assert message.get_attr("NDA_IFINDEX") == 3


# ---------------------------------------------------------------------------
# Constants


def test_nud_valid_set():
    assert codec.NUD_VALID == 0xDE
    for state in (codec.NUD_INCOMPLETE, codec.NUD_FAILED, codec.NUD_NONE):
        assert not state & codec.NUD_VALID


def test_nud_state_names():
    assert codec.nud_state_names(codec.NUD_REACHABLE) == ["REACHABLE"]
    assert codec.nud_state_names(codec.NUD_NONE) == ["NONE"]
    assert codec.nud_state_names(codec.NUD_STALE | codec.NUD_NOARP) == ["STALE", "NOARP"]
    assert set(codec.NUD_STATE_NAMES.values()) == {
        "INCOMPLETE", "REACHABLE", "STALE", "DELAY", "PROBE", "FAILED", "NOARP", "PERMANENT", "NONE",
    }


def test_constants_match_pyroute2():
    from pyroute2.netlink import rtnl
    from pyroute2.netlink.rtnl import ndmsg as pyroute2_ndmsg

    for name in ("RTM_NEWNEIGH", "RTM_DELNEIGH", "RTM_GETNEIGH", "RTM_NEWLINK", "RTM_DELLINK", "RTM_NEWADDR"):
        assert getattr(codec, name) == getattr(rtnl, name), name
    for name in ("NTF_PROXY", "NTF_ROUTER", "NTF_EXT_LEARNED", "NUD_PERMANENT", "NUD_FAILED", "NUD_NOARP"):
        assert getattr(codec, name) == getattr(pyroute2_ndmsg, name), name
    for index, (name, _kind) in enumerate(pyroute2_ndmsg.ndmsg.nla_map):
        assert getattr(codec, name) == index, name
