"""Encode rtnetlink dump requests and decode rtnetlink messages.

This module covers the few messages that neighbpf reads on its hot path:
neighbor records (``RTM_*NEIGH``), link records (``RTM_*LINK``), address
records (``RTM_*ADDR``) and the control messages ``NLMSG_DONE`` and
``NLMSG_ERROR``. Everything else goes through pyroute2.

Decoding runs in layers: :func:`iter_messages` walks the netlink headers of
one datagram, ``decode_*`` functions decode one message body, and
``_walk_attrs`` walks the attributes of a body. Constants keep the kernel's
names and values from the uapi headers ``linux/netlink.h``,
``linux/rtnetlink.h``, ``linux/neighbour.h``, ``linux/if_link.h`` and
``linux/if_addr.h``. Integers are in host byte order, as netlink sends
them.

Usage::

    counters = collections.Counter()
    sock.send(encode_neigh_dump_request(seq=1))
    for message in iter_messages(sock.recv(65536), counters):
        ...
"""

import collections
import struct
from typing import Iterator, NamedTuple

from .errors import DecodeError

__all__ = [
    "NeighMessage",
    "LinkMessage",
    "AddrMessage",
    "DoneMessage",
    "ErrorMessage",
    "encode_neigh_dump_request",
    "encode_link_dump_request",
    "encode_addr_dump_request",
    "decode_neigh",
    "decode_link",
    "decode_addr",
    "iter_messages",
    "nud_state_names",
]

# linux/socket.h
AF_UNSPEC = 0
AF_INET = 2
AF_BRIDGE = 7
AF_INET6 = 10

# linux/netlink.h: message types below NLMSG_MIN_TYPE are control messages.
NLMSG_NOOP = 0x1
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLMSG_OVERRUN = 0x4
NLMSG_MIN_TYPE = 0x10

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_ECHO = 0x08
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP_FILTERED = 0x20
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
# Flags of NLMSG_ERROR and NLMSG_DONE messages.
NLM_F_CAPPED = 0x100
NLM_F_ACK_TLVS = 0x200

NLMSGERR_ATTR_UNUSED = 0
NLMSGERR_ATTR_MSG = 1
NLMSGERR_ATTR_OFFS = 2

NLA_F_NESTED = 1 << 15
NLA_F_NET_BYTEORDER = 1 << 14
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF

# linux/rtnetlink.h
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWNEIGH = 28
RTM_DELNEIGH = 29
RTM_GETNEIGH = 30

RTN_UNSPEC = 0
RTN_UNICAST = 1
RTN_LOCAL = 2
RTN_BROADCAST = 3
RTN_ANYCAST = 4
RTN_MULTICAST = 5
RTN_BLACKHOLE = 6
RTN_UNREACHABLE = 7
RTN_PROHIBIT = 8
RTN_THROW = 9
RTN_NAT = 10
RTN_XRESOLVE = 11

# Multicast group numbers for NETLINK_ADD_MEMBERSHIP (enum rtnetlink_groups).
RTNLGRP_LINK = 1
RTNLGRP_NEIGH = 3
RTNLGRP_IPV4_IFADDR = 5

# linux/neighbour.h
NDA_UNSPEC = 0
NDA_DST = 1
NDA_LLADDR = 2
NDA_CACHEINFO = 3
NDA_PROBES = 4
NDA_VLAN = 5
NDA_PORT = 6
NDA_VNI = 7
NDA_IFINDEX = 8
NDA_MASTER = 9
NDA_LINK_NETNSID = 10
NDA_SRC_VNI = 11
NDA_PROTOCOL = 12
NDA_NH_ID = 13
NDA_FDB_EXT_ATTRS = 14
NDA_FLAGS_EXT = 15
NDA_NDM_STATE_MASK = 16
NDA_NDM_FLAGS_MASK = 17

NTF_USE = 1 << 0
NTF_SELF = 1 << 1
NTF_MASTER = 1 << 2
NTF_PROXY = 1 << 3
NTF_EXT_LEARNED = 1 << 4
NTF_OFFLOADED = 1 << 5
NTF_STICKY = 1 << 6
NTF_ROUTER = 1 << 7
# Extended flags, carried in NDA_FLAGS_EXT.
NTF_EXT_MANAGED = 1 << 0

NUD_NONE = 0x00
NUD_INCOMPLETE = 0x01
NUD_REACHABLE = 0x02
NUD_STALE = 0x04
NUD_DELAY = 0x08
NUD_PROBE = 0x10
NUD_FAILED = 0x20
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
# Same set as NUD_VALID in include/net/neighbour.h: states whose lladdr the
# kernel itself uses to transmit.
NUD_VALID = NUD_PERMANENT | NUD_NOARP | NUD_REACHABLE | NUD_PROBE | NUD_STALE | NUD_DELAY

# Names as `ip neigh` (iproute2, print_neigh_state) prints them, in its order.
NUD_STATE_NAMES = {
    NUD_INCOMPLETE: "INCOMPLETE",
    NUD_REACHABLE: "REACHABLE",
    NUD_STALE: "STALE",
    NUD_DELAY: "DELAY",
    NUD_PROBE: "PROBE",
    NUD_FAILED: "FAILED",
    NUD_NOARP: "NOARP",
    NUD_PERMANENT: "PERMANENT",
    NUD_NONE: "NONE",
}

# linux/if.h
IFF_UP = 0x1
IFF_RUNNING = 0x40
IFF_LOWER_UP = 0x10000

# linux/if_link.h
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_OPERSTATE = 16
IFLA_CARRIER = 33

# linux/if_addr.h
IFA_ADDRESS = 1
IFA_LOCAL = 2

_NLMSGHDR = struct.Struct("=IHHII")  # nlmsg_len, nlmsg_type, nlmsg_flags, nlmsg_seq, nlmsg_pid
_NLATTR = struct.Struct("=HH")  # nla_len, nla_type
_NDMSG = struct.Struct("=BxxxiHBB")  # ndm_family, pad, ifindex, state, flags, type
_IFINFOMSG = struct.Struct("=BxHiII")  # ifi_family, pad, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")  # ifa_family, prefixlen, flags, scope, index
_U32 = struct.Struct("=I")
_S32 = struct.Struct("=i")
_NDA_U32_ATTR = struct.Struct("=HHI")

_NLMSGHDR_LEN = _NLMSGHDR.size  # 16
_NLATTR_LEN = _NLATTR.size  # 4
_NDMSG_LEN = _NDMSG.size  # 12
_IFINFOMSG_LEN = _IFINFOMSG.size  # 16
_IFADDRMSG_LEN = _IFADDRMSG.size  # 8


class NeighMessage(NamedTuple):
    """One RTM_NEWNEIGH, RTM_DELNEIGH or RTM_GETNEIGH message."""

    msg_type: int
    nlmsg_flags: int
    seq: int
    # nlmsg_pid. 0 in events the kernel raises on its own, the requester's
    # port id in dump replies and in events that a request caused.
    portid: int
    family: int  # ndm_family
    ifindex: int
    state: int  # ndm_state, NUD_* bits
    flags: int  # ndm_flags, NTF_* bits
    ndm_type: int  # RTN_*
    dst: bytes | None  # NDA_DST, exactly 4 bytes for AF_INET
    lladdr: bytes | None  # NDA_LLADDR, any length
    flags_ext: int  # NDA_FLAGS_EXT, NTF_EXT_* bits, 0 when absent


class LinkMessage(NamedTuple):
    """One RTM_NEWLINK or RTM_DELLINK message."""

    msg_type: int
    nlmsg_flags: int
    seq: int
    portid: int
    ifindex: int
    ifi_flags: int  # IFF_* bits
    ifi_change: int  # IFF_* bits that changed
    ifname: str | None  # IFLA_IFNAME
    address: bytes | None  # IFLA_ADDRESS, the link-layer address


class AddrMessage(NamedTuple):
    """One RTM_NEWADDR or RTM_DELADDR message."""

    msg_type: int
    nlmsg_flags: int
    seq: int
    portid: int
    family: int
    prefixlen: int
    ifindex: int
    address: bytes | None  # IFA_LOCAL, else IFA_ADDRESS


class DoneMessage(NamedTuple):
    """NLMSG_DONE, the end of a dump."""

    nlmsg_flags: int
    seq: int
    portid: int
    error: int  # positive errno, 0 when the dump completed
    extack: str  # NLMSGERR_ATTR_MSG, "" when absent


class ErrorMessage(NamedTuple):
    """NLMSG_ERROR, the reply to a request: an error or, with error 0, an ACK."""

    nlmsg_flags: int
    seq: int
    portid: int
    error: int  # positive errno, 0 for an ACK
    extack: str  # NLMSGERR_ATTR_MSG, "" when absent


def nud_state_names(state):
    """Return the names of the NUD_* bits set in ``state``, as `ip neigh` orders them.

    ``NUD_NONE`` (0) returns ``["NONE"]``. Unknown bits are left out.
    """
    names = [name for bit, name in NUD_STATE_NAMES.items() if bit and state & bit]
    return names or [NUD_STATE_NAMES[NUD_NONE]]


def _nlmsg_align(length):
    return (length + 3) & ~3


# ---------------------------------------------------------------------------
# Encoding


def _encode_request(msg_type, flags, seq, body):
    header = _NLMSGHDR.pack(_NLMSGHDR_LEN + len(body), msg_type, flags, seq, 0)
    return header + body


def encode_neigh_dump_request(seq, ifindex=0):
    """Build an RTM_GETNEIGH dump request for AF_INET neighbors.

    With ``ifindex`` other than 0 the request carries an NDA_IFINDEX
    attribute, and the kernel (neigh_valid_dump_req) dumps only
    the entries of that interface. ``nlmsg_pid`` is 0 so that the kernel
    fills in the socket's port id. Returns the datagram to send.
    """
    body = _NDMSG.pack(AF_INET, 0, 0, 0, 0)
    if ifindex:
        body += _NDA_U32_ATTR.pack(_NLATTR_LEN + 4, NDA_IFINDEX, ifindex)
    return _encode_request(RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


def encode_link_dump_request(seq):
    """Build an RTM_GETLINK dump request for every link of the namespace."""
    body = _IFINFOMSG.pack(AF_UNSPEC, 0, 0, 0, 0)
    return _encode_request(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


def encode_addr_dump_request(seq, family=AF_INET):
    """Build an RTM_GETADDR dump request for the addresses of ``family``."""
    body = _IFADDRMSG.pack(family, 0, 0, 0, 0)
    return _encode_request(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


# ---------------------------------------------------------------------------
# Decoding: attributes


def _walk_attrs(buf, offset, end):
    """Yield ``(nla_type, value_offset, value_end)`` for each attribute in buf[offset:end].

    ``nla_type`` has the NLA_F_NESTED and NLA_F_NET_BYTEORDER bits cleared.
    Raises DecodeError with reason ``attr_truncated`` when 1 to 3 bytes
    remain, ``attr_len`` when nla_len < 4, and ``attr_overrun`` when an
    attribute runs past ``end``. Padding after an attribute may be cut at
    ``end``, as nla_ok() in lib/nlattr.c allows.
    """
    unpack_attr = _NLATTR.unpack_from
    while offset < end:
        if end - offset < _NLATTR_LEN:
            raise DecodeError("attr_truncated", f"{end - offset} bytes left at offset {offset}")
        nla_len, nla_type = unpack_attr(buf, offset)
        if nla_len < _NLATTR_LEN:
            raise DecodeError("attr_len", f"nla_len {nla_len} at offset {offset}")
        value_end = offset + nla_len
        if value_end > end:
            raise DecodeError("attr_overrun", f"nla_len {nla_len} at offset {offset} runs past {end}")
        yield nla_type & NLA_TYPE_MASK, offset + _NLATTR_LEN, value_end
        offset += (nla_len + 3) & ~3


def _decode_u32(buf, start, stop, name):
    if stop - start != 4:
        raise DecodeError(f"{name}_len", f"{name} has {stop - start} bytes, expected 4")
    return _U32.unpack_from(buf, start)[0]


def _decode_string(buf, start, stop):
    return bytes(buf[start:stop]).split(b"\0", 1)[0].decode("utf-8", "replace")


# ---------------------------------------------------------------------------
# Decoding: message bodies


def decode_neigh(buf, offset, length, nlmsg_type, nlmsg_flags, seq, portid):
    """Decode the ndmsg body at buf[offset:offset + length] into a NeighMessage.

    ``offset`` points just past the nlmsghdr and ``length`` is
    ``nlmsg_len - 16``. The header fields are passed in unchanged.
    NDA_DST, NDA_LLADDR and NDA_FLAGS_EXT are read, other attributes are
    skipped. Raises DecodeError, and nothing else, when the ndmsg is
    truncated (``header_truncated``), an attribute is malformed (see
    ``_walk_attrs``), NDA_DST of an AF_INET record is not 4 bytes
    (``dst_len``) or NDA_FLAGS_EXT is not 4 bytes (``flags_ext_len``).
    """
    if length < _NDMSG_LEN or offset < 0 or offset + length > len(buf):
        raise DecodeError("header_truncated", f"ndmsg needs {_NDMSG_LEN} bytes, message has {length}")
    family, ifindex, state, flags, ndm_type = _NDMSG.unpack_from(buf, offset)

    # The attribute walk is inlined instead of calling _walk_attrs, because
    # this loop runs once per neighbor of a dump and a generator is slower.
    dst = None
    lladdr = None
    flags_ext = 0
    attr_offset = offset + _NDMSG_LEN
    end = offset + length
    unpack_attr = _NLATTR.unpack_from
    while attr_offset < end:
        if end - attr_offset < _NLATTR_LEN:
            raise DecodeError("attr_truncated", f"{end - attr_offset} bytes left at offset {attr_offset}")
        nla_len, nla_type = unpack_attr(buf, attr_offset)
        if nla_len < _NLATTR_LEN:
            raise DecodeError("attr_len", f"nla_len {nla_len} at offset {attr_offset}")
        value_end = attr_offset + nla_len
        if value_end > end:
            raise DecodeError("attr_overrun", f"nla_len {nla_len} at offset {attr_offset} runs past {end}")
        nla_type &= NLA_TYPE_MASK
        if nla_type == NDA_DST:
            dst = bytes(buf[attr_offset + _NLATTR_LEN : value_end])
        elif nla_type == NDA_LLADDR:
            lladdr = bytes(buf[attr_offset + _NLATTR_LEN : value_end])
        elif nla_type == NDA_FLAGS_EXT:
            flags_ext = _decode_u32(buf, attr_offset + _NLATTR_LEN, value_end, "flags_ext")
        attr_offset += (nla_len + 3) & ~3

    if family == AF_INET and dst is not None and len(dst) != 4:
        raise DecodeError("dst_len", f"NDA_DST of an AF_INET record has {len(dst)} bytes, expected 4")
    return NeighMessage(
        nlmsg_type, nlmsg_flags, seq, portid, family, ifindex, state, flags, ndm_type, dst, lladdr, flags_ext
    )


def decode_link(buf, offset, length, nlmsg_type, nlmsg_flags, seq, portid):
    """Decode the ifinfomsg body at buf[offset:offset + length] into a LinkMessage.

    Same conventions as :func:`decode_neigh`. Reads IFLA_IFNAME and
    IFLA_ADDRESS and skips the other attributes. Raises DecodeError only.
    """
    if length < _IFINFOMSG_LEN or offset < 0 or offset + length > len(buf):
        raise DecodeError("header_truncated", f"ifinfomsg needs {_IFINFOMSG_LEN} bytes, message has {length}")
    _family, _ifi_type, ifindex, ifi_flags, ifi_change = _IFINFOMSG.unpack_from(buf, offset)
    ifname = None
    address = None
    for nla_type, start, stop in _walk_attrs(buf, offset + _IFINFOMSG_LEN, offset + length):
        if nla_type == IFLA_IFNAME:
            ifname = _decode_string(buf, start, stop)
        elif nla_type == IFLA_ADDRESS:
            address = bytes(buf[start:stop])
    return LinkMessage(nlmsg_type, nlmsg_flags, seq, portid, ifindex, ifi_flags, ifi_change, ifname, address)


def decode_addr(buf, offset, length, nlmsg_type, nlmsg_flags, seq, portid):
    """Decode the ifaddrmsg body at buf[offset:offset + length] into an AddrMessage.

    Same conventions as :func:`decode_neigh`. ``address`` is IFA_LOCAL when
    present, because on point-to-point links IFA_ADDRESS is the peer, and
    IFA_ADDRESS otherwise. Raises DecodeError only.
    """
    if length < _IFADDRMSG_LEN or offset < 0 or offset + length > len(buf):
        raise DecodeError("header_truncated", f"ifaddrmsg needs {_IFADDRMSG_LEN} bytes, message has {length}")
    family, prefixlen, _ifa_flags, _scope, ifindex = _IFADDRMSG.unpack_from(buf, offset)
    local = None
    address = None
    for nla_type, start, stop in _walk_attrs(buf, offset + _IFADDRMSG_LEN, offset + length):
        if nla_type == IFA_LOCAL:
            local = bytes(buf[start:stop])
        elif nla_type == IFA_ADDRESS:
            address = bytes(buf[start:stop])
    return AddrMessage(
        nlmsg_type, nlmsg_flags, seq, portid, family, prefixlen, ifindex, local if local is not None else address
    )


def _decode_extack(buf, offset, end):
    """Return the NLMSGERR_ATTR_MSG text in buf[offset:end], or "" when absent or malformed.

    Malformed extended-ack attributes do not drop the message that carries
    them, because the errno of an NLMSG_ERROR or NLMSG_DONE matters more
    than its text, and a dump reader waits for that message.
    """
    try:
        for nla_type, start, stop in _walk_attrs(buf, offset, end):
            if nla_type == NLMSGERR_ATTR_MSG:
                return _decode_string(buf, start, stop)
    except DecodeError:
        return ""
    return ""


def _decode_error(buf, offset, length, nlmsg_flags, seq, portid):
    """Decode the nlmsgerr body of an NLMSG_ERROR into an ErrorMessage.

    The body is the negative errno, the header of the request and, unless
    NLM_F_CAPPED is set, the rest of the request. Extended-ack attributes
    follow when NLM_F_ACK_TLVS is set (netlink_ack in net/netlink/af_netlink.c).
    """
    if length < 4 + _NLMSGHDR_LEN or offset + length > len(buf):
        raise DecodeError("header_truncated", f"nlmsgerr needs {4 + _NLMSGHDR_LEN} bytes, message has {length}")
    (error,) = _S32.unpack_from(buf, offset)
    extack = ""
    if nlmsg_flags & NLM_F_ACK_TLVS:
        if nlmsg_flags & NLM_F_CAPPED:
            request_len = _NLMSGHDR_LEN
        else:
            request_len = _nlmsg_align(_U32.unpack_from(buf, offset + 4)[0])
        # An echoed request that runs past the message leaves an empty
        # range, so the extack is "".
        extack = _decode_extack(buf, offset + 4 + request_len, offset + length)
    return ErrorMessage(nlmsg_flags, seq, portid, -error, extack)


def _decode_done(buf, offset, length, nlmsg_flags, seq, portid):
    """Decode NLMSG_DONE: the dump's negative errno, then extack attributes.

    A body shorter than 4 bytes is read as a completed dump (error 0), so
    that a dump reader still sees its end. rtnetlink always sends the 4
    bytes (netlink_dump_done in net/netlink/af_netlink.c).
    """
    if length < 4:
        return DoneMessage(nlmsg_flags, seq, portid, 0, "")
    (error,) = _S32.unpack_from(buf, offset)
    extack = ""
    if nlmsg_flags & NLM_F_ACK_TLVS:
        extack = _decode_extack(buf, offset + 4, offset + length)
    return DoneMessage(nlmsg_flags, seq, portid, -error, extack)


_DECODERS = {
    RTM_NEWNEIGH: decode_neigh,
    RTM_DELNEIGH: decode_neigh,
    RTM_GETNEIGH: decode_neigh,
    RTM_NEWLINK: decode_link,
    RTM_DELLINK: decode_link,
    RTM_NEWADDR: decode_addr,
    RTM_DELADDR: decode_addr,
}


# ---------------------------------------------------------------------------
# Decoding: datagrams


def iter_messages(data, counters: collections.Counter) -> Iterator:
    """Yield a message tuple for each netlink message in one datagram.

    Yields NeighMessage, LinkMessage, AddrMessage, DoneMessage and
    ErrorMessage. Neighbor records of every family are yielded, so that the
    caller can count the ones it ignores. Never raises on bad input:

    - a message whose body is malformed is skipped and counted as
      ``counters["malformed_<reason>"]``, with the reasons of
      :func:`decode_neigh`;
    - an nlmsg_len below 16 or past the end of the datagram makes the rest
      of the datagram unreadable: it is skipped and counted as
      ``malformed_nlmsg_len``, and 1 to 15 trailing bytes as
      ``malformed_nlmsg_truncated``;
    - NLMSG_NOOP is skipped, NLMSG_OVERRUN is counted as ``overrun``, and
      any other type as ``unknown_type``.

    ``data`` is bytes or a memoryview, and yielded ``bytes`` fields are
    copies, so the caller may reuse its receive buffer after each message.
    """
    buf = data
    end = len(buf)
    offset = 0
    unpack_header = _NLMSGHDR.unpack_from
    neigh_types = (RTM_NEWNEIGH, RTM_DELNEIGH)
    while offset < end:
        if end - offset < _NLMSGHDR_LEN:
            counters["malformed_nlmsg_truncated"] += 1
            return
        nlmsg_len, nlmsg_type, nlmsg_flags, seq, portid = unpack_header(buf, offset)
        if nlmsg_len < _NLMSGHDR_LEN or offset + nlmsg_len > end:
            counters["malformed_nlmsg_len"] += 1
            return
        body_offset = offset + _NLMSGHDR_LEN
        body_len = nlmsg_len - _NLMSGHDR_LEN
        offset += (nlmsg_len + 3) & ~3

        try:
            if nlmsg_type in neigh_types:
                yield decode_neigh(buf, body_offset, body_len, nlmsg_type, nlmsg_flags, seq, portid)
            elif nlmsg_type == NLMSG_DONE:
                yield _decode_done(buf, body_offset, body_len, nlmsg_flags, seq, portid)
            elif nlmsg_type == NLMSG_ERROR:
                yield _decode_error(buf, body_offset, body_len, nlmsg_flags, seq, portid)
            elif nlmsg_type == NLMSG_NOOP:
                continue
            elif nlmsg_type == NLMSG_OVERRUN:
                counters["overrun"] += 1
            else:
                decoder = _DECODERS.get(nlmsg_type)
                if decoder is None:
                    counters["unknown_type"] += 1
                    continue
                yield decoder(buf, body_offset, body_len, nlmsg_type, nlmsg_flags, seq, portid)
        except DecodeError as exc:
            counters["malformed_" + exc.reason] += 1
