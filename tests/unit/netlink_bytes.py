"""Byte builders, fixture loaders and a pyroute2 reference view for codec tests.

The builders write exactly the values of their arguments and never fix lengths
up on their own, so tests can build malformed messages with them as well.
"""

import pathlib
import socket
import struct

from pyroute2.netlink.rtnl.ndmsg import ndmsg as Pyroute2Ndmsg

from neighbpf import codec

DATA_DIR = pathlib.Path(__file__).parent / "data"


def pad4(data):
    return data + b"\0" * (-len(data) % 4)


def nla(nla_type, value, nla_len=None):
    """Return one attribute, padded to 4 bytes. ``nla_len`` overrides the length field."""
    if nla_len is None:
        nla_len = 4 + len(value)
    return pad4(struct.pack("=HH", nla_len, nla_type) + value)


def ndmsg(family=codec.AF_INET, ifindex=2, state=codec.NUD_REACHABLE, flags=0, ndm_type=codec.RTN_UNICAST):
    return struct.pack("=BxxxiHBB", family, ifindex, state, flags, ndm_type)


def nlmsg(msg_type, body, flags=0, seq=0, portid=0, nlmsg_len=None):
    """Return one netlink message padded to 4 bytes. ``nlmsg_len`` overrides the length field."""
    if nlmsg_len is None:
        nlmsg_len = 16 + len(body)
    return pad4(struct.pack("=IHHII", nlmsg_len, msg_type, flags, seq, portid) + body)


def neigh(
    msg_type=codec.RTM_NEWNEIGH,
    family=codec.AF_INET,
    ifindex=2,
    state=codec.NUD_REACHABLE,
    flags=0,
    ndm_type=codec.RTN_UNICAST,
    dst=b"\xc6\x12\x00\x05",
    lladdr=b"\x02\x00\x00\x00\x00\x05",
    flags_ext=None,
    extra=b"",
    nlmsg_flags=0,
    seq=0,
    portid=0,
):
    """Return one neighbor message. ``None`` leaves an attribute out; ``extra`` is appended raw."""
    body = ndmsg(family, ifindex, state, flags, ndm_type)
    if dst is not None:
        body += nla(codec.NDA_DST, dst)
    if lladdr is not None:
        body += nla(codec.NDA_LLADDR, lladdr)
    body += nla(codec.NDA_CACHEINFO, struct.pack("=IIII", 10, 20, 30, 1))
    body += nla(codec.NDA_PROBES, struct.pack("=I", 0))
    if flags_ext is not None:
        body += nla(codec.NDA_FLAGS_EXT, struct.pack("=I", flags_ext))
    body += extra
    return nlmsg(msg_type, body, nlmsg_flags, seq, portid)


def done(error=0, flags=codec.NLM_F_MULTI, seq=0, portid=0, extack=None):
    body = struct.pack("=i", error)
    if extack is not None:
        flags |= codec.NLM_F_ACK_TLVS
        body += nla(codec.NLMSGERR_ATTR_MSG, extack.encode() + b"\0")
    return nlmsg(codec.NLMSG_DONE, body, flags, seq, portid)


def error(error, request, seq=0, portid=0, extack=None, capped=False):
    """Return an NLMSG_ERROR that echoes ``request`` (whole, or only its header when capped)."""
    flags = 0
    echoed = request
    if capped:
        flags |= codec.NLM_F_CAPPED
        echoed = request[:16]
    body = struct.pack("=i", error) + echoed
    if extack is not None:
        flags |= codec.NLM_F_ACK_TLVS
        body += nla(codec.NLMSGERR_ATTR_MSG, extack.encode() + b"\0")
    return nlmsg(codec.NLMSG_ERROR, body, flags, seq, portid)


def load_hex(name):
    """Return the datagrams of one captured file in tests/unit/data."""
    lines = (DATA_DIR / name).read_text().splitlines()
    return [bytes.fromhex(line) for line in lines if line and not line.startswith("#")]


def split_messages(datagram):
    """Yield ``(nlmsg_type, message_bytes)`` for each message of a well-formed datagram."""
    offset = 0
    while offset < len(datagram):
        nlmsg_len, nlmsg_type = struct.unpack_from("=IH", datagram, offset)
        yield nlmsg_type, datagram[offset : offset + nlmsg_len]
        offset += (nlmsg_len + 3) & ~3


def _address_text(value):
    """Format an address the way pyroute2 does: IPv4 and IPv6 by length, else colon hex."""
    if value is None:
        return None
    if len(value) == 4:
        return socket.inet_ntop(socket.AF_INET, value)
    if len(value) == 16:
        return socket.inet_ntop(socket.AF_INET6, value)
    return ":".join(f"{byte:02x}" for byte in value)


def codec_view(message):
    """Return the fields of a NeighMessage in pyroute2's representation."""
    return (
        message.msg_type,
        message.nlmsg_flags,
        message.seq,
        message.portid,
        message.family,
        message.ifindex,
        message.state,
        message.flags,
        message.ndm_type,
        _address_text(message.dst),
        _address_text(message.lladdr),
        message.flags_ext,
    )


def pyroute2_view(message_bytes):
    """Decode one neighbor message with pyroute2 and return the fields codec_view returns."""
    message = Pyroute2Ndmsg(message_bytes)
    message.decode()
    header = message["header"]
    return (
        header["type"],
        header["flags"],
        header["sequence_number"],
        header["pid"],
        message["family"],
        message["ifindex"],
        message["state"],
        message["flags"],
        message["ndm_type"],
        message.get_attr("NDA_DST"),
        message.get_attr("NDA_LLADDR"),
        message.get_attr("NDA_FLAGS_EXT") or 0,
    )
