"""Probe the running kernel for features that differ between versions.

neighbpf supports Debian 12's kernel 6.1 and newer. Each probe makes the
real call once (a bpf() command on a throwaway map, a socket option, a
neighbor entry in a throwaway network namespace), caches the result for
the life of the process and returns a bool. Probes never change state
that outlives them. The BPF and namespace probes need root (CAP_BPF,
CAP_NET_ADMIN, CAP_SYS_ADMIN) and raise ``UsageError`` without it,
because False would wrongly claim that the kernel lacks the feature.

``python -m neighbpf.features`` prints every probe's result as JSON.
"""

import ctypes
import errno
import functools
import json
import logging
import os
import secrets
import socket
import subprocess
import sys

from pyroute2 import IPRoute, NetlinkError

from . import netns
from .errors import UsageError

__all__ = [
    "has_batch_ops",
    "has_managed_neighbors",
    "has_strict_check",
    "has_xdp_native_veth",
    "map_info_size",
    "has_map_info_map_extra",
    "report",
]

log = logging.getLogger(__name__)

SYS_BPF = 321  # x86_64 syscall number of bpf(2)

# Commands and map types from <linux/bpf.h>.
BPF_MAP_CREATE = 0
BPF_PROG_LOAD = 5
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_UPDATE_BATCH = 26
BPF_PROG_TYPE_XDP = 6
BPF_F_NO_PREALLOC = 1 << 0
MAP_TYPES = {"hash": 1, "array": 2, "percpu_hash": 5, "lru_hash": 9, "lpm_trie": 11}

# From <linux/netlink.h> and <linux/socket.h>.
SOL_NETLINK = 270
NETLINK_GET_STRICT_CHK = 12

# XDP_FLAGS_DRV_MODE from <linux/if_link.h>.
XDP_FLAGS_DRV_MODE = 1 << 2

# Offset of map_extra in struct bpf_map_info (<linux/bpf.h>), and the
# size of the struct up to and including it.
MAP_INFO_MAP_EXTRA_END = 88

_BPF_ATTR_SIZE = 128  # larger than every bpf_attr member used here
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd, attr):
    """Call bpf(2); return (result, errno) with errno 0 on success."""
    result = _libc.syscall(SYS_BPF, ctypes.c_int(cmd), ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr)))
    return result, (ctypes.get_errno() if result < 0 else 0)


def _attr(*fields):
    """Return a zeroed bpf_attr with leading 32-bit ``fields`` filled in."""
    attr = (ctypes.c_uint8 * _BPF_ATTR_SIZE)()
    ctypes.memmove(attr, (ctypes.c_uint32 * len(fields))(*fields), 4 * len(fields))
    return attr


def _raise_if_unprivileged(err, what):
    if err == errno.EPERM:
        raise UsageError(f"probing {what} needs root (CAP_BPF or CAP_SYS_ADMIN); run as root")


def _create_map(map_type, key_size, value_size, max_entries, map_flags=0):
    attr = _attr(map_type, key_size, value_size, max_entries, map_flags)
    fd, err = _bpf(BPF_MAP_CREATE, attr)
    _raise_if_unprivileged(err, "BPF maps")
    if fd < 0:
        raise OSError(err, f"BPF_MAP_CREATE of map type {map_type} failed: {os.strerror(err)}")
    return fd


class _BatchAttr(ctypes.Structure):
    """The ``batch`` member of union bpf_attr (Linux 5.6)."""

    _fields_ = [
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("pad", ctypes.c_uint8 * (_BPF_ATTR_SIZE - 56)),
    ]


def _batch_keys(map_name, count):
    """Return ``count`` distinct keys as bytes, and the key size."""
    if map_name == "lpm_trie":
        # struct bpf_lpm_trie_key with an IPv4 address: prefixlen 32, then
        # 198.18.0.x in network byte order.
        keys = [(32).to_bytes(4, "little") + bytes([198, 18, 0, i]) for i in range(count)]
        return keys, 8
    return [i.to_bytes(4, "little") for i in range(count)], 4


def _possible_cpus():
    """Return the number of possible CPUs, which sizes per-CPU map values."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


@functools.cache
def has_batch_ops(map_type="hash"):
    """Return whether BPF_MAP_UPDATE_BATCH and BPF_MAP_LOOKUP_BATCH work on ``map_type``.

    ``map_type`` is one of "hash", "array", "percpu_hash", "lru_hash" and
    "lpm_trie". Hash and array maps gained batch commands in Linux 5.6
    (commits 057996380a42 and cb4d03ab499d), LPM tries in 5.13 (commit
    "bpf: Add support for batched ops in LPM trie maps"). The probe
    writes two entries to a new map with one batch update and reads them
    back with one batch lookup.
    """
    if map_type not in MAP_TYPES:
        raise UsageError(f"unknown map type {map_type!r} for has_batch_ops; use one of {', '.join(MAP_TYPES)}")
    count = 2
    keys, key_size = _batch_keys(map_type, count)
    value_size = 8
    # A per-CPU map reads and writes one value per possible CPU.
    value_stride = value_size * (_possible_cpus() if map_type.startswith("percpu") else 1)
    flags = BPF_F_NO_PREALLOC if map_type == "lpm_trie" else 0
    # An array always contains max_entries elements, so it gets exactly two.
    max_entries = count if map_type == "array" else 2 * count
    fd = _create_map(MAP_TYPES[map_type], key_size, value_size, max_entries, flags)
    try:
        key_buffer = ctypes.create_string_buffer(b"".join(keys), key_size * count)
        value_buffer = ctypes.create_string_buffer(value_stride * count)
        update = _BatchAttr(keys=ctypes.addressof(key_buffer), values=ctypes.addressof(value_buffer),
                            count=count, map_fd=fd)
        result, err = _bpf(BPF_MAP_UPDATE_BATCH, update)
        if result < 0:
            log.debug("BPF_MAP_UPDATE_BATCH on %s map failed: %s", map_type, errno.errorcode.get(err, err))
            return False

        out_keys = ctypes.create_string_buffer(key_size * max_entries)
        out_values = ctypes.create_string_buffer(value_stride * max_entries)
        # Hash maps return a 4-byte bucket index as the batch cursor, other
        # maps a key, so the cursor has room for the larger of the two.
        out_batch = ctypes.create_string_buffer(max(key_size, 8))
        lookup = _BatchAttr(out_batch=ctypes.addressof(out_batch), keys=ctypes.addressof(out_keys),
                            values=ctypes.addressof(out_values), count=max_entries, map_fd=fd)
        result, err = _bpf(BPF_MAP_LOOKUP_BATCH, lookup)
        # ENOENT ends a batch lookup that reached the last entry.
        if result < 0 and err != errno.ENOENT:
            log.debug("BPF_MAP_LOOKUP_BATCH on %s map failed: %s", map_type, errno.errorcode.get(err, err))
            return False
        return lookup.count == count
    finally:
        os.close(fd)


@functools.cache
def has_strict_check():
    """Return whether rtnetlink sockets accept NETLINK_GET_STRICT_CHK (Linux 4.20).

    With strict checking the kernel validates the header of a dump request
    and applies its filters, such as a neighbor dump limited to one
    ifindex. Without it a filtered dump may return every entry.
    """
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
    except OSError as exc:
        log.debug("NETLINK_GET_STRICT_CHK rejected: %s", exc)
        return False
    finally:
        sock.close()
    return True


class _ScratchNamespace:
    """A network namespace with a unique name, deleted on exit."""

    def __init__(self):
        self.name = f"nbprobe{os.getpid()}{secrets.token_hex(3)}"

    def ip(self, *args):
        return subprocess.run(["ip", "-n", self.name, *args], capture_output=True, text=True)

    def __enter__(self):
        if os.geteuid() != 0:
            raise UsageError("probing neighbor and XDP features needs root to create a network namespace; run as root")
        created = subprocess.run(["ip", "netns", "add", self.name], capture_output=True, text=True)
        if created.returncode != 0:
            raise OSError(f"ip netns add {self.name} failed: {created.stderr.strip()}")
        return self

    def __exit__(self, *exc_info):
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


@functools.cache
def has_managed_neighbors():
    """Return whether the kernel keeps managed neighbors (NTF_EXT_MANAGED, Linux 5.16).

    Linux 5.16 added the NDA_FLAGS_EXT attribute and its first flag,
    NTF_EXT_MANAGED (commit 7482e3841d52). The probe adds a managed entry
    on a veth link in a scratch namespace and checks that a dump reports
    the flag back. Older kernels ignore the unknown attribute, so the
    entry comes back without it.
    """
    with _ScratchNamespace() as ns:
        # veth rather than dummy: some kernels build dummy as a module that
        # is not installed, while neighbpf needs veth anyway.
        for args in (("link", "add", "probe0", "type", "veth", "peer", "name", "probe1"),
                     ("link", "set", "probe0", "up"),
                     ("addr", "add", "198.18.0.1/24", "dev", "probe0")):
            step = ns.ip(*args)
            if step.returncode != 0:
                raise OSError(f"ip {' '.join(args)} in {ns.name} failed: {step.stderr.strip()}")
        added = ns.ip("neigh", "add", "198.18.0.2", "dev", "probe0", "managed")
        if added.returncode != 0:
            log.debug("adding a managed neighbor failed: %s", added.stderr.strip())
            return False
        shown = ns.ip("-j", "neigh", "show", "dev", "probe0", "198.18.0.2")
        entries = json.loads(shown.stdout or "[]")
        # iproute2 6.1 prints NTF_EXT_MANAGED as a "managed" key with a
        # null value, not inside "flags".
        return any("managed" in entry or "managed" in entry.get("flags", []) for entry in entries)


@functools.cache
def has_xdp_native_veth():
    """Return whether veth links accept XDP in native (driver) mode (Linux 4.19).

    The probe loads a two-instruction XDP program that returns XDP_PASS,
    and attaches it with XDP_FLAGS_DRV_MODE to a veth link in a scratch
    namespace. The namespace takes the attachment with it when deleted.
    """
    prog_fd = _load_xdp_pass()
    try:
        with _ScratchNamespace() as ns:
            step = ns.ip("link", "add", "probe0", "type", "veth", "peer", "name", "probe1")
            if step.returncode != 0:
                raise OSError(f"creating a veth pair in {ns.name} failed: {step.stderr.strip()}")
            return _attach_xdp_native(ns.name, "probe0", prog_fd)
    finally:
        os.close(prog_fd)


def _load_xdp_pass():
    # r0 = XDP_PASS (2); exit
    insns = (ctypes.c_uint64 * 2)(0x00000002_000000B7, 0x95)
    license_text = ctypes.create_string_buffer(b"GPL")
    attr = (ctypes.c_uint8 * _BPF_ATTR_SIZE)()
    header = (ctypes.c_uint32 * 2)(BPF_PROG_TYPE_XDP, 2)
    ctypes.memmove(attr, header, 8)
    ctypes.memmove(ctypes.byref(attr, 8), (ctypes.c_uint64 * 2)(ctypes.addressof(insns),
                                                                ctypes.addressof(license_text)), 16)
    fd, err = _bpf(BPF_PROG_LOAD, attr)
    _raise_if_unprivileged(err, "XDP programs")
    if fd < 0:
        raise OSError(err, f"BPF_PROG_LOAD of an XDP_PASS program failed: {os.strerror(err)}")
    return fd


def _attach_xdp_native(netns_name, ifname, prog_fd):
    with netns.entered(netns_name):
        ipr = IPRoute()
    try:
        ifindex = ipr.link_lookup(ifname=ifname)[0]
        ipr.link("set", index=ifindex,
                 xdp={"attrs": [("IFLA_XDP_FD", prog_fd), ("IFLA_XDP_FLAGS", XDP_FLAGS_DRV_MODE)]})
    except NetlinkError as exc:
        log.debug("native XDP attach on veth failed: %s", exc)
        return False
    finally:
        ipr.close()
    return True


@functools.cache
def map_info_size():
    """Return the size of ``struct bpf_map_info`` that the kernel fills in.

    BPF_OBJ_GET_INFO_BY_FD copies at most the caller's buffer and reports
    how many bytes it wrote, so a large buffer shows the kernel's size
    (88 bytes on Linux 6.1 and 104 on 6.18, which appended fields).
    """
    fd = _create_map(MAP_TYPES["array"], 4, 8, 1)
    try:
        info = ctypes.create_string_buffer(512)
        attr = (ctypes.c_uint8 * _BPF_ATTR_SIZE)()
        # struct { __u32 bpf_fd; __u32 info_len; __aligned_u64 info; } info;
        ctypes.memmove(attr, (ctypes.c_uint32 * 2)(fd, len(info)), 8)
        ctypes.memmove(ctypes.byref(attr, 8), (ctypes.c_uint64 * 1)(ctypes.addressof(info)), 8)
        result, err = _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
        if result < 0:
            raise OSError(err, f"BPF_OBJ_GET_INFO_BY_FD on a map failed: {os.strerror(err)}")
        return ctypes.c_uint32.from_buffer(attr, 4).value
    finally:
        os.close(fd)


def has_map_info_map_extra():
    """Return whether ``bpf_map_info`` has ``map_extra`` (Linux 5.16, with bloom filter maps)."""
    return map_info_size() >= MAP_INFO_MAP_EXTRA_END


def report():
    """Run every probe and return a dict of the results, with the kernel release."""
    return {
        "kernel": os.uname().release,
        "batch_ops": {name: has_batch_ops(name) for name in MAP_TYPES},
        "strict_check": has_strict_check(),
        "managed_neighbors": has_managed_neighbors(),
        "xdp_native_veth": has_xdp_native_veth(),
        "map_info_size": map_info_size(),
        "map_info_map_extra": has_map_info_map_extra(),
    }


def main():
    try:
        print(json.dumps(report(), indent=2, sort_keys=True))
    except UsageError as exc:
        print(f"neighbpf.features: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
