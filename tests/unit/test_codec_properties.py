"""Property tests of neighbpf.codec with generated and corrupted messages."""

import collections
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neighbpf import codec
from neighbpf.errors import DecodeError
from netlink_bytes import codec_view, done, nla, nlmsg, pyroute2_view, split_messages

pytestmark = pytest.mark.unit

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NEIGH_TYPES = (codec.RTM_NEWNEIGH, codec.RTM_DELNEIGH, codec.RTM_GETNEIGH)
U32 = st.integers(min_value=0, max_value=2**32 - 1)
MESSAGE_TYPES = (codec.RTM_NEWNEIGH, codec.RTM_DELNEIGH, codec.RTM_GETNEIGH)
# Attribute types that the codec does not read, with values of any size,
# as newer kernels may add. NDA_FDB_EXT_ATTRS is nested in the kernel but
# skipped unread here.
SKIPPED_ATTR_TYPES = st.sampled_from(
    [codec.NDA_PROBES, codec.NDA_VLAN, codec.NDA_MASTER, codec.NDA_PROTOCOL, codec.NDA_FDB_EXT_ATTRS, 18, 42, 0x3FFF]
)


@st.composite
def neighbor_messages(draw):
    """Return ``(message_bytes, expected NeighMessage)`` for a valid neighbor message."""
    family = draw(st.sampled_from([codec.AF_INET, codec.AF_INET6, codec.AF_BRIDGE]))
    msg_type = draw(st.sampled_from(MESSAGE_TYPES))
    nlmsg_flags = draw(st.integers(min_value=0, max_value=0xFFFF))
    seq = draw(U32)
    portid = draw(U32)
    ifindex = draw(st.integers(min_value=-(2**31), max_value=2**31 - 1))
    state = draw(st.integers(min_value=0, max_value=0xFFFF))
    flags = draw(st.integers(min_value=0, max_value=0xFF))
    ndm_type = draw(st.integers(min_value=0, max_value=0xFF))
    dst_size = {codec.AF_INET: 4, codec.AF_INET6: 16, codec.AF_BRIDGE: 16}[family]
    dst = draw(st.none() | st.binary(min_size=dst_size, max_size=dst_size))
    # pyroute2 formats an lladdr of 4 or 16 bytes as an IP address and any
    # other size as colon hex, and codec_view does the same.
    lladdr = draw(st.none() | st.binary(max_size=32))
    flags_ext = draw(st.none() | U32)

    attrs = []
    if dst is not None:
        attrs.append(nla(codec.NDA_DST, dst))
    if lladdr is not None:
        attrs.append(nla(codec.NDA_LLADDR, lladdr))
    if flags_ext is not None:
        attrs.append(nla(codec.NDA_FLAGS_EXT, struct.pack("=I", flags_ext)))
    for nla_type, value in draw(st.lists(st.tuples(SKIPPED_ATTR_TYPES, st.binary(max_size=24)), max_size=3)):
        attrs.append(nla(nla_type, value))
    attrs = draw(st.permutations(attrs))

    body = struct.pack("=BxxxiHBB", family, ifindex, state, flags, ndm_type) + b"".join(attrs)
    message_bytes = nlmsg(msg_type, body, nlmsg_flags, seq, portid)
    expected = codec.NeighMessage(
        msg_type, nlmsg_flags, seq, portid, family, ifindex, state, flags, ndm_type, dst, lladdr, flags_ext or 0
    )
    return message_bytes, expected


@st.composite
def datagrams(draw):
    """Return a valid datagram of 1 to 4 neighbor messages, with or without NLMSG_DONE."""
    generated = draw(st.lists(neighbor_messages(), min_size=1, max_size=4))
    datagram = b"".join(message_bytes for message_bytes, _ in generated)
    if draw(st.booleans()):
        datagram += done()
    return datagram


@PROPERTY_SETTINGS
@given(neighbor_messages())
def test_generated_message_decodes(generated):
    message_bytes, expected = generated
    counters = collections.Counter()

    messages = list(codec.iter_messages(message_bytes, counters))

    assert messages == [expected]
    assert dict(counters) == {}


@PROPERTY_SETTINGS
@given(datagrams())
def test_generated_agrees_with_pyroute2(datagram):
    counters = collections.Counter()
    decoded = [m for m in codec.iter_messages(datagram, counters) if isinstance(m, codec.NeighMessage)]
    raw = [data for msg_type, data in split_messages(datagram) if msg_type in NEIGH_TYPES]

    assert dict(counters) == {}
    assert len(decoded) == len(raw)
    for message, message_bytes in zip(decoded, raw):
        assert codec_view(message) == pyroute2_view(message_bytes)


def check_never_raises(data):
    counters = collections.Counter()
    messages = list(codec.iter_messages(data, counters))
    message_classes = (
        codec.NeighMessage,
        codec.LinkMessage,
        codec.AddrMessage,
        codec.DoneMessage,
        codec.ErrorMessage,
    )
    assert all(isinstance(m, message_classes) for m in messages)
    assert all(isinstance(count, int) and count > 0 for count in counters.values())


@PROPERTY_SETTINGS
@given(datagrams(), st.data())
def test_truncated_datagram_never_raises(datagram, data):
    cut = data.draw(st.integers(min_value=0, max_value=len(datagram)))

    check_never_raises(datagram[:cut])


@PROPERTY_SETTINGS
@given(datagrams(), st.data())
def test_flipped_bytes_never_raise(datagram, data):
    corrupted = bytearray(datagram)
    positions = data.draw(st.lists(st.integers(min_value=0, max_value=len(datagram) - 1), min_size=1, max_size=8))
    for position in positions:
        corrupted[position] ^= data.draw(st.integers(min_value=1, max_value=255))

    check_never_raises(bytes(corrupted))


@PROPERTY_SETTINGS
@given(datagrams(), st.data())
def test_random_nla_len_never_raises(datagram, data):
    # Overwrite the nla_len of one attribute, or the nlmsg_len of one
    # message, with any 16-bit or 32-bit value.
    corrupted = bytearray(datagram)
    header_offsets = []
    offset = 0
    while offset < len(datagram):
        nlmsg_len = struct.unpack_from("=I", datagram, offset)[0]
        header_offsets.append(("nlmsg", offset))
        attr_offset = offset + 16 + 12 if datagram[offset + 4] in NEIGH_TYPES else offset + 16 + 4
        while attr_offset + 4 <= offset + nlmsg_len:
            header_offsets.append(("nla", attr_offset))
            attr_offset += (struct.unpack_from("=H", datagram, attr_offset)[0] + 3) & ~3
        offset += (nlmsg_len + 3) & ~3
    kind, position = data.draw(st.sampled_from(header_offsets))
    if kind == "nla":
        struct.pack_into("=H", corrupted, position, data.draw(st.integers(min_value=0, max_value=0xFFFF)))
    else:
        struct.pack_into("=I", corrupted, position, data.draw(U32))

    check_never_raises(bytes(corrupted))


@PROPERTY_SETTINGS
@given(st.binary(max_size=256))
def test_random_bytes_never_raise(data):
    check_never_raises(data)


@PROPERTY_SETTINGS
@given(st.binary(max_size=128), st.integers(min_value=-8, max_value=160), st.integers(min_value=-8, max_value=160))
def test_decode_neigh_raises_only_decode_error(buf, offset, length):
    try:
        message = codec.decode_neigh(buf, offset, length, codec.RTM_NEWNEIGH, 0, 0, 0)
    except DecodeError as exc:
        assert exc.reason in {"header_truncated", "attr_truncated", "attr_len", "attr_overrun", "dst_len", "flags_ext_len"}
    else:
        assert isinstance(message, codec.NeighMessage)


@PROPERTY_SETTINGS
@given(datagrams(), st.data())
def test_decode_neigh_corrupted_raises_only_decode_error(datagram, data):
    corrupted = bytearray(datagram)
    for position in data.draw(st.lists(st.integers(min_value=16, max_value=len(datagram) - 1), max_size=6)):
        corrupted[position] = data.draw(st.integers(min_value=0, max_value=255))
    nlmsg_len = struct.unpack_from("=I", datagram, 0)[0]

    try:
        codec.decode_neigh(bytes(corrupted), 16, nlmsg_len - 16, codec.RTM_NEWNEIGH, 0, 0, 0)
    except DecodeError:
        pass
