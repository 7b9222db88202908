"""Python view of the neighbpf map ABI defined in ``bpf/neighbpf.h``.

Every constant and struct here mirrors the header one to one, and
``tests/unit/test_abi.py`` compiles the header with gcc to check that the
values, sizes and field offsets are equal. Change both together, and raise
``ABI_VERSION`` when a layout or meaning changes.
"""

import ctypes
import enum
import os

__all__ = [
    "ABI_VERSION", "PIN_DIR_DEFAULT", "PIN_NEIGH4", "PIN_ROUTES4", "PIN_IFACES", "PIN_META",
    "PIN_XDP_STATS", "PIN_NAMES", "NUD_VALID", "ROUTES4_MAX_ENTRIES", "IFACES_MAX_ENTRIES",
    "META_MAX_ENTRIES", "XDP_STATS_MAX_ENTRIES", "Stat", "NeighKey", "NeighValue", "RouteKey",
    "RouteValue", "IfaceValue", "Meta", "HEADER_PATH", "BPF_SOURCE_DIR",
]

ABI_VERSION = 1

PIN_DIR_DEFAULT = "/sys/fs/bpf/neighbpf"
PIN_NEIGH4 = "neigh4"
PIN_ROUTES4 = "routes4"
PIN_IFACES = "ifaces"
PIN_META = "meta"
PIN_XDP_STATS = "xdp_stats"
PIN_NAMES = (PIN_NEIGH4, PIN_ROUTES4, PIN_IFACES, PIN_META, PIN_XDP_STATS)

# The kernel's NUD_VALID (include/net/neighbour.h): PERMANENT | NOARP |
# REACHABLE | PROBE | STALE | DELAY.
NUD_VALID = 0xDE

ROUTES4_MAX_ENTRIES = 4096
IFACES_MAX_ENTRIES = 4096
META_MAX_ENTRIES = 1

BPF_SOURCE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bpf")
HEADER_PATH = os.path.join(BPF_SOURCE_DIR, "neighbpf.h")


class Stat(enum.IntEnum):
    """Index into the ``xdp_stats`` per-CPU array (``enum neighbpf_stat``)."""

    HIT = 0
    MISS = 1
    PASS = 2
    ERROR = 3


STAT_COUNT = len(Stat)
XDP_STATS_MAX_ENTRIES = STAT_COUNT


class NeighKey(ctypes.Structure):
    """``struct neighbpf_neigh_key``: ``ip4`` is the address in network byte order."""

    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("ip4", ctypes.c_uint8 * 4),
    ]


class NeighValue(ctypes.Structure):
    """``struct neighbpf_neigh_value``: MAC, NUD_* state and NTF_* flags."""

    _fields_ = [
        ("lladdr", ctypes.c_uint8 * 6),
        ("nud_state", ctypes.c_uint16),
        ("ntf_flags", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    ]


class RouteKey(ctypes.Structure):
    """``struct neighbpf_route_key``: LPM trie key, prefix length then the network."""

    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("ip4", ctypes.c_uint8 * 4),
    ]


class RouteValue(ctypes.Structure):
    """``struct neighbpf_route_value``: egress ifindex of a connected prefix."""

    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    ]


class IfaceValue(ctypes.Structure):
    """``struct neighbpf_iface_value``: an interface's own MAC."""

    _fields_ = [
        ("lladdr", ctypes.c_uint8 * 6),
        ("reserved", ctypes.c_uint16),
        ("flags", ctypes.c_uint32),
    ]


class Meta(ctypes.Structure):
    """``struct neighbpf_meta``: the ABI version of the pinned maps."""

    _fields_ = [
        ("abi_version", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32 * 3),
    ]
