"""Pinned neighbpf maps, opened and written through bcc's libbpf wrappers.

The maps are created and pinned here, without compiling a BPF program, so
that the daemon, the command line tools and any XDP program share them
through their pins (layouts in ``bpf/neighbpf.h``, mirrored in
``neighbpf.abi``)::

    maps = PinnedMaps.open("/sys/fs/bpf/neighbpf", create=True)
    result = maps.neigh.update_batch([((ifindex, dst4), (lladdr, NUD_REACHABLE, 0))])
    maps.close()

Every failed bpf() call is translated into ``MapError`` (carrying the
errno) or ``UsageError`` in ``_check()``; nothing else raises OSError.
"""

import ctypes
import errno
import logging
import os
import struct
import time
from dataclasses import dataclass, field

from bcc.libbcc import lib as _libbcc
from bcc.utils import get_possible_cpus

from . import abi
from .errors import AbiMismatchError, MapError, UsageError

__all__ = ["PinnedMaps", "NeighMap", "RouteMap", "IfaceMap", "XdpStats", "BatchResult", "unpin_dir"]

log = logging.getLogger(__name__)

# enum bpf_map_type and map flags from <linux/bpf.h>.
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_F_NO_PREALLOC = 1 << 0
BPF_ANY = 0

# The kernel's internal "operation not supported" (include/linux/errno.h);
# bpf() returns it for batch commands that a map type does not implement.
ENOTSUPP = 524
_BATCH_UNSUPPORTED = (errno.EINVAL, ENOTSUPP, errno.EOPNOTSUPP)
# Errors that concern one element and leave the map usable: a full map
# (E2BIG for hash maps, ENOSPC for LPM tries), memory pressure, a bad key.
_ELEMENT_ERRORS = (errno.E2BIG, errno.ENOSPC, errno.ENOMEM, errno.EINVAL)

BPF_FS_MAGIC = 0xCAFE4A11
PIN_DIR_MODE = 0o700
PIN_MODE = 0o600
GC_THRESH3_PATH = "/proc/sys/net/ipv4/neigh/default/gc_thresh3"
# PERMANENT and externally learned neighbors are exempt from gc_thresh3
# (the exempt_from_gc argument of __neigh_create() in net/core/neighbour.c),
# so a table can exceed it; 3,000 PERMANENT entries were accepted with
# gc_thresh3 at 1024 on Linux 6.18. 65536 entries cost about 5 MiB.
NEIGH4_MIN_ENTRIES = 65536
LOOKUP_BATCH_CHUNK = 1024

# The layouts of abi.NeighKey and abi.NeighValue, for decoding whole
# batches with struct.iter_unpack: ctypes objects per entry cost about
# three times as much at 100,000 entries.
_NEIGH_KEY = struct.Struct("=I4s")
_NEIGH_VALUE = struct.Struct("=6sHII")
assert _NEIGH_KEY.size == ctypes.sizeof(abi.NeighKey)
assert _NEIGH_VALUE.size == ctypes.sizeof(abi.NeighValue)
FULL_LOG_INTERVAL_S = 10.0


class _BpfMapInfo(ctypes.Structure):
    """Leading fields of ``struct bpf_map_info``; the kernel fills what fits."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


def _declare(name, restype, argtypes):
    """Return a private function pointer of libbcc with its C prototype.

    ``lib[name]`` makes a new pointer, so bcc's own declarations stay as
    they are. The library is loaded with use_errno=True.
    """
    function = _libbcc[name]
    function.restype = restype
    function.argtypes = argtypes
    return function


_u32_p = ctypes.POINTER(ctypes.c_uint32)
# Prototypes from bcc 0.26 src/cc/libbpf.h.
_bcc_create_map = _declare("bcc_create_map", ctypes.c_int, [
    ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int])
_bpf_obj_pin = _declare("bpf_obj_pin", ctypes.c_int, [ctypes.c_int, ctypes.c_char_p])
_bpf_obj_get = _declare("bpf_obj_get", ctypes.c_int, [ctypes.c_char_p])
_bpf_obj_get_info = _declare("bpf_obj_get_info", ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, _u32_p])
_bpf_lookup_elem = _declare("bpf_lookup_elem", ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p])
_bpf_update_elem = _declare("bpf_update_elem", ctypes.c_int, [
    ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ulonglong])
_bpf_delete_elem = _declare("bpf_delete_elem", ctypes.c_int, [ctypes.c_int, ctypes.c_void_p])
_bpf_get_next_key = _declare("bpf_get_next_key", ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p])
_bpf_update_batch = _declare("bpf_update_batch", ctypes.c_int, [
    ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, _u32_p])
_bpf_delete_batch = _declare("bpf_delete_batch", ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, _u32_p])
_bpf_lookup_batch = _declare("bpf_lookup_batch", ctypes.c_int, [
    ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, _u32_p])


def _call(function, *args):
    """Call a libbcc function and return (result, errno); errno is 0 on success.

    bcc's wrappers either return -1 and set errno (raw syscalls) or return
    -errno (libbpf 1.0 conventions), so both are read.
    """
    ctypes.set_errno(0)
    result = function(*args)
    if result >= 0:
        return result, 0
    err = ctypes.get_errno() or -result
    return result, err


def _check(result, err, operation, path):
    """Translate a failed call into MapError or UsageError; return ``result`` otherwise."""
    if err == 0:
        return result
    name = errno.errorcode.get(err, str(err))
    if err == errno.EPERM or err == errno.EACCES:
        raise UsageError(f"{operation} on {path} failed with {name}; run as root (CAP_BPF and CAP_NET_ADMIN)")
    raise MapError(f"{operation} on {path} failed: {name} ({os.strerror(err)})", errno=err)


class _RateLimitedLog:
    """Log one warning per key at most every ``interval_s``, with the count of repeats."""

    def __init__(self, interval_s=FULL_LOG_INTERVAL_S):
        self.interval_s = interval_s
        self._last = {}
        self._suppressed = {}

    def warning(self, key, message, *args):
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        repeats = self._suppressed.pop(key, 0)
        self._last[key] = now
        if repeats:
            message += " (%d similar warnings suppressed)"
            args = (*args, repeats)
        log.warning(message, *args)


@dataclass
class BatchResult:
    """Outcome of ``NeighMap.update_batch``.

    ``written`` counts the entries the kernel accepted. ``failed`` lists
    ``((ifindex, dst4), errno)`` for each rejected entry, in input order.
    """

    written: int = 0
    failed: list = field(default_factory=list)


class _PinnedMap:
    """One open map: its fd, pin path, layout and the checks shared by all maps."""

    def __init__(self, fd, path, info):
        self.fd = fd
        self.path = path
        self.key_size = info.key_size
        self.value_size = info.value_size
        self.max_entries = info.max_entries

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _lookup(self, key, value):
        """Read ``key`` into ``value``; return False when the key is absent."""
        _, err = _call(_bpf_lookup_elem, self.fd, ctypes.byref(key), ctypes.byref(value))
        if err == errno.ENOENT:
            return False
        _check(0, err, "BPF_MAP_LOOKUP_ELEM", self.path)
        return True

    def _update(self, key, value):
        """Write one element; return 0 or the errno of an element error."""
        _, err = _call(_bpf_update_elem, self.fd, ctypes.byref(key), ctypes.byref(value), BPF_ANY)
        if err in _ELEMENT_ERRORS:
            return err
        _check(0, err, "BPF_MAP_UPDATE_ELEM", self.path)
        return 0

    def _delete(self, key):
        """Delete one element; return True when it existed."""
        _, err = _call(_bpf_delete_elem, self.fd, ctypes.byref(key))
        if err == errno.ENOENT:
            return False
        _check(0, err, "BPF_MAP_DELETE_ELEM", self.path)
        return True

    def _keys(self, key_type):
        """Yield copies of every key with BPF_MAP_GET_NEXT_KEY.

        A key deleted by another writer during the walk makes the kernel
        restart from the first key, so a key can be yielded twice. Callers
        that build a dict are not affected.
        """
        key = key_type()
        next_key = key_type()
        previous = None
        while True:
            _, err = _call(_bpf_get_next_key, self.fd, previous, ctypes.byref(next_key))
            if err == errno.ENOENT:
                return
            _check(0, err, "BPF_MAP_GET_NEXT_KEY", self.path)
            ctypes.memmove(ctypes.byref(key), ctypes.byref(next_key), ctypes.sizeof(key_type))
            yield key_type.from_buffer_copy(key)
            previous = ctypes.byref(key)

    def _read_pairs(self, key_type, value_type):
        """Return [(key, value)] of every element, one lookup per key."""
        pairs = []
        for key in self._keys(key_type):
            value = value_type()
            if self._lookup(key, value):
                pairs.append((key, value))
        return pairs


class NeighMap(_PinnedMap):
    """The ``neigh4`` hash map: (ifindex, IPv4) -> (MAC, NUD state, NTF flags)."""

    def __init__(self, fd, path, info):
        super().__init__(fd, path, info)
        self.batch_supported = True
        self._full_log = _RateLimitedLog()

    def update_batch(self, items):
        """Insert or overwrite entries, batched where the kernel allows.

        ``items`` is an iterable of ``((ifindex, dst4), (lladdr, nud_state,
        ntf_flags))`` with ``dst4`` 4 bytes in network order and ``lladdr``
        6 bytes. One BPF_MAP_UPDATE_BATCH call writes them in order. When
        it stops early (a full map returns E2BIG), the remaining items are
        written one by one. Updates of keys already present then still
        succeed, and each rejected key is reported. Entries not named in
        ``items`` are never touched. When the kernel rejects batch commands
        (EINVAL before Linux 5.6, ENOTSUPP), single updates are used from
        then on. Returns a BatchResult; raises MapError for errors that
        concern the map rather than one element, ValueError for a
        malformed item.
        """
        items = list(items)
        if not items:
            return BatchResult()
        keys = (abi.NeighKey * len(items))()
        values = (abi.NeighValue * len(items))()
        for index, ((ifindex, dst4), (lladdr, nud_state, ntf_flags)) in enumerate(items):
            _fill_neigh_key(keys[index], ifindex, dst4)
            value = values[index]
            if len(lladdr) != 6:
                raise ValueError(f"lladdr {bytes(lladdr).hex(':')} for {_format_key(ifindex, dst4)} is not 6 bytes")
            value.lladdr[:] = bytes(lladdr)
            value.nud_state = nud_state
            value.ntf_flags = ntf_flags

        result = BatchResult()
        start = 0
        if self.batch_supported:
            count = ctypes.c_uint32(len(items))
            _, err = _call(_bpf_update_batch, self.fd, keys, values, ctypes.byref(count))
            if err == 0:
                result.written = len(items)
                return result
            if count.value == 0 and err in _BATCH_UNSUPPORTED:
                self.batch_supported = False
                log.info("%s: kernel rejected BPF_MAP_UPDATE_BATCH with %s; using single updates",
                         self.path, errno.errorcode.get(err, err))
            elif err not in _ELEMENT_ERRORS:
                _check(0, err, "BPF_MAP_UPDATE_BATCH", self.path)
            result.written = count.value
            start = count.value

        for index in range(start, len(items)):
            err = self._update(keys[index], values[index])
            if err:
                result.failed.append((items[index][0], err))
            else:
                result.written += 1
        if result.failed:
            self._log_failures(result.failed)
        return result

    def _log_failures(self, failed):
        full = [key for key, err in failed if err in (errno.E2BIG, errno.ENOSPC)]
        if full:
            self._full_log.warning(
                "full", "%s is full (max_entries %d): %d entries not mirrored, first %s; "
                "raise max_entries by removing the pin directory and restarting",
                self.path, self.max_entries, len(full), _format_key(*full[0]))
        other = [(key, err) for key, err in failed if err not in (errno.E2BIG, errno.ENOSPC)]
        if other:
            key, err = other[0]
            self._full_log.warning(
                "element", "%s: %d updates failed, first %s with %s",
                self.path, len(other), _format_key(*key), errno.errorcode.get(err, err))

    def delete_batch(self, keys):
        """Delete ``(ifindex, dst4)`` keys; a key that is already gone counts as done.

        Returns the number of keys that were present and are now removed.
        Raises MapError for any error other than ENOENT.
        """
        keys = list(keys)
        if not keys:
            return 0
        key_array = (abi.NeighKey * len(keys))()
        for index, (ifindex, dst4) in enumerate(keys):
            _fill_neigh_key(key_array[index], ifindex, dst4)

        deleted = 0
        start = 0
        while start < len(keys) and self.batch_supported:
            count = ctypes.c_uint32(len(keys) - start)
            _, err = _call(_bpf_delete_batch, self.fd, ctypes.byref(key_array[start]), ctypes.byref(count))
            deleted += count.value
            if err == 0:
                return deleted
            if err == errno.ENOENT:
                # generic_map_delete_batch() stops at the first missing key
                # and reports how many it deleted before it: skip that key.
                start += count.value + 1
                continue
            if count.value == 0 and err in _BATCH_UNSUPPORTED:
                self.batch_supported = False
                log.info("%s: kernel rejected BPF_MAP_DELETE_BATCH with %s; using single deletes",
                         self.path, errno.errorcode.get(err, err))
                break
            _check(0, err, "BPF_MAP_DELETE_BATCH", self.path)

        for index in range(start, len(keys)):
            if self._delete(key_array[index]):
                deleted += 1
        return deleted

    def read_all(self):
        """Return ``{(ifindex, dst4): (lladdr, nud_state, ntf_flags)}`` of every entry.

        Uses BPF_MAP_LOOKUP_BATCH, or BPF_MAP_GET_NEXT_KEY plus lookups on
        kernels without it. The result is not a snapshot: entries written
        during the read may or may not appear.
        """
        chunks = self._lookup_batch_chunks() if self.batch_supported else None
        if chunks is None:
            return {
                (key.ifindex, bytes(key.ip4)): (bytes(value.lladdr), value.nud_state, value.ntf_flags)
                for key, value in self._read_pairs(abi.NeighKey, abi.NeighValue)
            }
        entries = {}
        for key_bytes, value_bytes in chunks:
            rows = zip(_NEIGH_KEY.iter_unpack(key_bytes), _NEIGH_VALUE.iter_unpack(value_bytes))
            for (ifindex, dst), (lladdr, nud_state, ntf_flags, _reserved) in rows:
                entries[(ifindex, dst)] = (lladdr, nud_state, ntf_flags)
        return entries

    def _lookup_batch_chunks(self):
        """Return [(key bytes, value bytes)] through BPF_MAP_LOOKUP_BATCH, or None when unsupported."""
        chunks = []
        chunk = LOOKUP_BATCH_CHUNK
        in_batch = ctypes.c_uint32(0)
        out_batch = ctypes.c_uint32(0)
        first = True
        while True:
            keys = (abi.NeighKey * chunk)()
            values = (abi.NeighValue * chunk)()
            count = ctypes.c_uint32(chunk)
            _, err = _call(_bpf_lookup_batch, self.fd, None if first else ctypes.byref(in_batch),
                           ctypes.byref(out_batch), keys, values, ctypes.byref(count))
            if err == errno.ENOSPC and count.value == 0:
                # One hash bucket contains more entries than the buffer.
                chunk *= 2
                continue
            if first and count.value == 0 and err in _BATCH_UNSUPPORTED:
                self.batch_supported = False
                return None
            if err not in (0, errno.ENOENT):
                _check(0, err, "BPF_MAP_LOOKUP_BATCH", self.path)
            chunks.append((bytes(keys)[:count.value * _NEIGH_KEY.size],
                           bytes(values)[:count.value * _NEIGH_VALUE.size]))
            if err == errno.ENOENT:
                return chunks
            in_batch.value = out_batch.value
            first = False


class RouteMap(_PinnedMap):
    """The ``routes4`` LPM trie: connected IPv4 prefix -> egress ifindex."""

    def replace_all(self, prefixes):
        """Make the map hold exactly ``prefixes``.

        ``prefixes`` maps ``(network4, prefixlen)`` (4 bytes, network order)
        to an ifindex. New and changed prefixes are written before stale
        ones are deleted, so a prefix present in both is never missing.
        Raises MapError when the trie is full (ENOSPC) or a write fails.
        """
        expected = {}
        for (network4, prefixlen), ifindex in prefixes.items():
            key = _route_key(network4, prefixlen)
            expected[(bytes(key.ip4), key.prefixlen)] = (key, ifindex)
        current = self.read_all()

        for (network4, prefixlen), (key, ifindex) in expected.items():
            if current.get((network4, prefixlen)) == ifindex:
                continue
            value = abi.RouteValue(ifindex=ifindex)
            err = self._update(key, value)
            if err:
                _check(0, err, f"BPF_MAP_UPDATE_ELEM of {_format_prefix(network4, prefixlen)}", self.path)

        for network4, prefixlen in current:
            if (network4, prefixlen) not in expected:
                self._delete(_route_key(network4, prefixlen))

    def read_all(self):
        """Return ``{(network4, prefixlen): ifindex}`` of every prefix."""
        return {
            (bytes(key.ip4), key.prefixlen): value.ifindex
            for key, value in self._read_pairs(abi.RouteKey, abi.RouteValue)
        }


class IfaceMap(_PinnedMap):
    """The ``ifaces`` hash map: ifindex -> the interface's own MAC."""

    def replace_all(self, ifaces):
        """Make the map hold exactly ``ifaces`` (``{ifindex: lladdr}``, 6-byte MACs).

        Writes new and changed entries before it deletes stale ones.
        Raises MapError when the map is full (E2BIG) or a write fails,
        ValueError for a MAC that is not 6 bytes.
        """
        current = self.read_all()
        for ifindex, lladdr in ifaces.items():
            lladdr = bytes(lladdr)
            if len(lladdr) != 6:
                raise ValueError(f"lladdr {lladdr.hex(':')} of ifindex {ifindex} is not 6 bytes")
            if current.get(ifindex) == lladdr:
                continue
            value = abi.IfaceValue()
            value.lladdr[:] = lladdr
            err = self._update(ctypes.c_uint32(ifindex), value)
            if err:
                _check(0, err, f"BPF_MAP_UPDATE_ELEM of ifindex {ifindex}", self.path)

        for ifindex in current:
            if ifindex not in ifaces:
                self._delete(ctypes.c_uint32(ifindex))

    def read_all(self):
        """Return ``{ifindex: lladdr}`` of every interface."""
        return {key.value: bytes(value.lladdr) for key, value in self._read_pairs(ctypes.c_uint32, abi.IfaceValue)}


class XdpStats(_PinnedMap):
    """The ``xdp_stats`` per-CPU array of packet counters."""

    NAMES = {abi.Stat.HIT: "hits", abi.Stat.MISS: "misses", abi.Stat.PASS: "passes", abi.Stat.ERROR: "errors"}

    def read(self):
        """Return ``{"hits", "misses", "passes", "errors"}`` summed over all possible CPUs."""
        cpu_count = len(get_possible_cpus())
        totals = {}
        for stat_index, name in self.NAMES.items():
            values = (ctypes.c_uint64 * cpu_count)()
            if not self._lookup(ctypes.c_uint32(stat_index), values):
                raise MapError(f"{self.path} has no counter {int(stat_index)}; remove the pin directory", errno.ENOENT)
            totals[name] = sum(values)
        return totals


def _fill_neigh_key(key, ifindex, dst4):
    dst4 = bytes(dst4)
    if len(dst4) != 4:
        raise ValueError(f"IPv4 address {dst4.hex()} on ifindex {ifindex} is not 4 bytes")
    key.ifindex = ifindex
    key.ip4[:] = dst4


def _route_key(network4, prefixlen):
    network4 = bytes(network4)
    if len(network4) != 4 or not 0 <= prefixlen <= 32:
        raise ValueError(f"invalid IPv4 prefix {network4.hex()}/{prefixlen}")
    host_mask = (1 << (32 - prefixlen)) - 1
    network = int.from_bytes(network4, "big") & ~host_mask & 0xFFFFFFFF
    key = abi.RouteKey(prefixlen=prefixlen)
    key.ip4[:] = network.to_bytes(4, "big")
    return key


def _format_key(ifindex, dst4):
    return f"{'.'.join(str(b) for b in bytes(dst4))} on ifindex {ifindex}"


def _format_prefix(network4, prefixlen):
    return f"{'.'.join(str(b) for b in bytes(network4))}/{prefixlen}"


@dataclass(frozen=True)
class _MapSpec:
    pin_name: str
    map_type: int
    key_size: int
    value_size: int
    flags: int = 0


def _map_specs(neigh_max_entries):
    """Return [(spec, max_entries, wrapper class)] of every neighbpf map."""
    return [
        (_MapSpec(abi.PIN_NEIGH4, BPF_MAP_TYPE_HASH, ctypes.sizeof(abi.NeighKey), ctypes.sizeof(abi.NeighValue)),
         neigh_max_entries, NeighMap),
        (_MapSpec(abi.PIN_ROUTES4, BPF_MAP_TYPE_LPM_TRIE, ctypes.sizeof(abi.RouteKey),
                  ctypes.sizeof(abi.RouteValue), BPF_F_NO_PREALLOC),
         abi.ROUTES4_MAX_ENTRIES, RouteMap),
        (_MapSpec(abi.PIN_IFACES, BPF_MAP_TYPE_HASH, 4, ctypes.sizeof(abi.IfaceValue)),
         abi.IFACES_MAX_ENTRIES, IfaceMap),
        (_MapSpec(abi.PIN_META, BPF_MAP_TYPE_ARRAY, 4, ctypes.sizeof(abi.Meta)),
         abi.META_MAX_ENTRIES, _PinnedMap),
        (_MapSpec(abi.PIN_XDP_STATS, BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8),
         abi.XDP_STATS_MAX_ENTRIES, XdpStats),
    ]


def default_neigh_max_entries():
    """Return the default ``neigh4`` size: max(gc_thresh3, 65536) rounded up to a power of two.

    gc_thresh3 is the kernel's limit of IPv4 neighbor entries that garbage
    collection manages, read from ``GC_THRESH3_PATH`` (ignored when it
    cannot be read). PERMANENT entries come on top, hence the minimum.
    """
    try:
        with open(GC_THRESH3_PATH) as f:
            gc_thresh3 = int(f.read().strip())
    except (OSError, ValueError):
        gc_thresh3 = 0
    min_entries = max(gc_thresh3, NEIGH4_MIN_ENTRIES)
    return 1 << (min_entries - 1).bit_length()


def _statfs_type(path):
    """Return the f_type of the filesystem that contains ``path``, or None."""
    buffer = ctypes.create_string_buffer(256)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.statfs(os.fsencode(path), buffer) != 0:
        return None
    # struct statfs starts with a long f_type on Linux (glibc bits/statfs.h).
    return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF


def _check_bpffs(pin_dir):
    """Raise UsageError unless the nearest existing ancestor of ``pin_dir`` is on bpffs."""
    probe = os.path.dirname(os.path.abspath(pin_dir))
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if _statfs_type(probe) != BPF_FS_MAGIC:
        raise UsageError(
            f"{probe} is not on a BPF filesystem, so maps cannot be pinned at {pin_dir}; "
            "mount it with 'mount -t bpf bpf /sys/fs/bpf' or choose a --pin-dir under it")


def _map_info(fd, path):
    info = _BpfMapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    result, err = _call(_bpf_obj_get_info, fd, ctypes.byref(info), ctypes.byref(size))
    _check(result, err, "BPF_OBJ_GET_INFO_BY_FD", path)
    return info


def _open_pin(path):
    """Return an fd of the map pinned at ``path``, or None when no pin exists."""
    fd, err = _call(_bpf_obj_get, os.fsencode(path))
    if err == errno.ENOENT:
        return None
    return _check(fd, err, "BPF_OBJ_GET", path)


def _validate(spec, fd, path):
    """Raise AbiMismatchError when the map at ``path`` does not have ``spec``'s layout."""
    info = _map_info(fd, path)
    found = (info.type, info.key_size, info.value_size)
    expected = (spec.map_type, spec.key_size, spec.value_size)
    if found != expected:
        os.close(fd)
        raise AbiMismatchError(
            f"pinned map {path} has type {info.type}, key size {info.key_size}, value size "
            f"{info.value_size} but ABI {abi.ABI_VERSION} needs {spec.map_type}, {spec.key_size}, "
            f"{spec.value_size}; remove {os.path.dirname(path)} or use another --pin-dir")
    return info


def _create_pin(spec, max_entries, path):
    """Create a map, pin it at ``path`` with mode 0600 and return its fd.

    When another process pinned the same name first (EEXIST), that map is
    opened instead.
    """
    fd, err = _call(_bcc_create_map, spec.map_type, spec.pin_name.encode(), spec.key_size,
                    spec.value_size, max_entries, spec.flags)
    _check(fd, err, f"BPF_MAP_CREATE (max_entries {max_entries})", path)
    result, err = _call(_bpf_obj_pin, fd, os.fsencode(path))
    if err == errno.EEXIST:
        os.close(fd)
        return _open_pin(path), False
    try:
        _check(result, err, "BPF_OBJ_PIN", path)
        os.chmod(path, PIN_MODE)
    except (OSError, MapError) as exc:
        os.close(fd)
        if isinstance(exc, MapError):
            raise
        raise MapError(f"chmod {oct(PIN_MODE)} of {path} failed: {exc.strerror}", exc.errno) from exc
    log.info("created %s (max_entries %d)", path, max_entries)
    return fd, True


def unpin_dir(pin_dir):
    """Remove every neighbpf pin in ``pin_dir`` and then the directory.

    Missing pins and a missing directory are not errors. Files that are
    not neighbpf pins are left alone, and the directory then stays.
    Maps stay alive while a program or fd still refers to them.
    """
    for name in abi.PIN_NAMES:
        try:
            os.unlink(os.path.join(pin_dir, name))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(pin_dir)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("pin directory %s not removed: %s", pin_dir, exc.strerror)


class PinnedMaps:
    """The five neighbpf maps of one pin directory.

    Attributes: ``neigh`` (NeighMap), ``routes`` (RouteMap), ``ifaces``
    (IfaceMap), ``stats`` (XdpStats), ``pin_dir``. Use as a context
    manager or call ``close()``; closing does not remove the pins.
    """

    def __init__(self, pin_dir, maps, meta):
        self.pin_dir = pin_dir
        self.neigh = maps[abi.PIN_NEIGH4]
        self.routes = maps[abi.PIN_ROUTES4]
        self.ifaces = maps[abi.PIN_IFACES]
        self.stats = maps[abi.PIN_XDP_STATS]
        self._meta = meta
        self._maps = list(maps.values())

    @classmethod
    def open(cls, pin_dir=abi.PIN_DIR_DEFAULT, create=False, max_entries=None):
        """Open the maps pinned in ``pin_dir``, creating missing ones when ``create`` is set.

        Existing pins are reused whatever their max_entries, so a restarted
        daemon keeps its entries. With ``create``, ``pin_dir`` is made with
        mode 0700, each missing map is created (``neigh4`` with
        ``max_entries``, default ``default_neigh_max_entries()``) and
        pinned with mode 0600, and meta.abi_version is written.

        Raises UsageError when not root, when bpffs is not mounted, or when
        pins are missing and ``create`` is false. Raises AbiMismatchError,
        before anything is created, when a pin has another ABI version, map
        type, key size or value size. Raises MapError for other bpf()
        failures.
        """
        if os.geteuid() != 0:
            raise UsageError(f"opening BPF maps at {pin_dir} needs root; run neighbpf as root")
        _check_bpffs(pin_dir)
        neigh_max_entries = max_entries or default_neigh_max_entries()
        specs = _map_specs(neigh_max_entries)

        opened = {}
        try:
            missing = []
            for spec, _, _ in specs:
                path = os.path.join(pin_dir, spec.pin_name)
                fd = _open_pin(path)
                if fd is None:
                    missing.append(spec.pin_name)
                    continue
                opened[spec.pin_name] = (fd, _validate(spec, fd, path))

            if abi.PIN_META in opened:
                _check_meta_version(opened[abi.PIN_META][0], os.path.join(pin_dir, abi.PIN_META))
            if missing and not create:
                if len(missing) == len(specs):
                    raise UsageError(f"no neighbpf maps pinned at {pin_dir}; "
                                     "start 'neighbpf run' or 'neighbpf sync --once' first")
                raise UsageError(f"pins {', '.join(missing)} missing in {pin_dir}; remove the directory "
                                 "and start 'neighbpf run' or 'neighbpf sync --once'")

            if missing:
                os.makedirs(pin_dir, mode=PIN_DIR_MODE, exist_ok=True)
            for spec, spec_max_entries, _ in specs:
                if spec.pin_name in opened:
                    continue
                path = os.path.join(pin_dir, spec.pin_name)
                fd, created = _create_pin(spec, spec_max_entries, path)
                info = _validate(spec, fd, path) if not created else _map_info(fd, path)
                opened[spec.pin_name] = (fd, info)
                if spec.pin_name == abi.PIN_META and created:
                    _write_meta(fd, path)
                elif spec.pin_name == abi.PIN_META:
                    _check_meta_version(fd, path)
        except BaseException:
            for fd, _ in opened.values():
                os.close(fd)
            raise

        maps = {}
        for spec, _, wrapper in specs:
            fd, info = opened[spec.pin_name]
            maps[spec.pin_name] = wrapper(fd, os.path.join(pin_dir, spec.pin_name), info)
        return cls(pin_dir, maps, maps[abi.PIN_META])

    def abi_version(self):
        """Return meta.abi_version as stored in the pinned map."""
        meta = abi.Meta()
        self._meta._lookup(ctypes.c_uint32(0), meta)
        return meta.abi_version

    def close(self):
        """Close every map fd; the pins and their contents stay."""
        for pinned_map in self._maps:
            pinned_map.close()

    def unpin(self):
        """Remove every pin and the pin directory; the open fds stay usable until close()."""
        unpin_dir(self.pin_dir)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _read_meta(fd, path):
    meta = abi.Meta()
    _, err = _call(_bpf_lookup_elem, fd, ctypes.byref(ctypes.c_uint32(0)), ctypes.byref(meta))
    _check(0, err, "BPF_MAP_LOOKUP_ELEM", path)
    return meta


def _write_meta(fd, path):
    meta = abi.Meta(abi_version=abi.ABI_VERSION)
    _, err = _call(_bpf_update_elem, fd, ctypes.byref(ctypes.c_uint32(0)), ctypes.byref(meta), BPF_ANY)
    _check(0, err, "BPF_MAP_UPDATE_ELEM", path)


def _check_meta_version(fd, path):
    version = _read_meta(fd, path).abi_version
    if version != abi.ABI_VERSION:
        raise AbiMismatchError(
            f"pinned maps in {os.path.dirname(path)} have ABI version {version}, this neighbpf uses "
            f"{abi.ABI_VERSION}; remove {os.path.dirname(path)} or use another --pin-dir")

