"""Admin API: one-shot sync, map listing, verification and counters.

These functions back the ``sync``, ``show``, ``verify`` and ``stats``
commands and are the supported way for Python callers to do the same.
Each raises UsageError for a missing namespace, interface, pin directory
or privilege, and NeighbpfError for other failures.
"""

import ipaddress
import json
import os
import socket
import time
from typing import NamedTuple

from . import codec, netns
from .bpfmap import PinnedMaps
from .daemon import DEFAULT_PIN_DIR, PinDirLock, stats_path
from .errors import UsageError
from .kernel import KernelSource
from .mirror import Mirror
from .table import NeighborTable

# Counters older than this are not reported as a running daemon's.
STALE_STATS_S = 10.0


def require_root(command):
    """Raise UsageError unless the process runs as root."""
    if os.geteuid() != 0:
        raise UsageError(f"{command} needs root (BPF maps, XDP and netlink); retry with sudo")


def sync_once(netns_name=None, pin_dir=DEFAULT_PIN_DIR, iface_names=None, max_entries=None):
    """Dump the kernel's neighbors into the pinned map, sweep, and return.

    Creates the pins when missing. Returns a SyncResult with the number
    of entries, the keys swept from the map, the dump and mirror times,
    and the entries the map rejected (``not_mirrored``, as when full).
    """
    require_root("neighbpf sync")
    if netns_name is not None:
        netns.netns_path(netns_name)
    lock = PinDirLock(pin_dir).acquire()
    try:
        return _sync_once_locked(netns_name, pin_dir, iface_names, max_entries)
    finally:
        lock.release()


def _sync_once_locked(netns_name, pin_dir, iface_names, max_entries):
    maps = PinnedMaps.open(pin_dir, create=True, max_entries=max_entries)
    try:
        mirror = Mirror(maps, KernelSource(netns_name), iface_names=iface_names)
        try:
            result = mirror.full_resync("sync --once")
            missing = mirror.missing_ifaces()
            if missing:
                raise UsageError(f"interface {missing[0]!r} not found; check 'ip link show'")
            return result
        finally:
            mirror.close()
    finally:
        maps.close()


def _ifindex_names(netns_name):
    with netns.entered(netns_name):
        return {index: name for index, name in socket.if_nameindex()}


class NeighborRow(NamedTuple):
    """One neighbor as ``ip -j neigh`` names its fields."""

    dst: str
    lladdr: str
    ifindex: int
    dev: str
    state: list

    def as_json(self):
        return self._asdict()


def _row(key, value, names):
    ifindex, dst = key
    lladdr, state, _flags = value
    return NeighborRow(
        dst=str(ipaddress.IPv4Address(dst)),
        lladdr=":".join(f"{b:02x}" for b in lladdr),
        ifindex=ifindex,
        dev=names.get(ifindex, f"if{ifindex}"),
        state=codec.nud_state_names(state),
    )


def _sort_key(item):
    (ifindex, dst), _ = item
    return ifindex, dst


def show(pin_dir=DEFAULT_PIN_DIR, netns_name=None):
    """Return the pinned map's entries as NeighborRows, sorted."""
    require_root("neighbpf show")
    names = _ifindex_names(netns_name)
    maps = PinnedMaps.open(pin_dir)
    try:
        entries = maps.neigh.read_all()
    finally:
        maps.close()
    return [_row(k, v, names) for k, v in sorted(entries.items(), key=_sort_key)]


class Difference(NamedTuple):
    """One key where the kernel and the map disagree."""

    kind: str           # "missing" (kernel only), "extra" (map only), "different"
    row: NeighborRow    # the kernel's view, or the map's for "extra"
    map_row: NeighborRow | None = None

    def describe(self):
        if self.kind == "missing":
            return f"missing from map: {self.row.dst} dev {self.row.dev} lladdr {self.row.lladdr}"
        if self.kind == "extra":
            return f"extra in map: {self.row.dst} dev {self.row.dev} lladdr {self.row.lladdr}"
        return (f"different: {self.row.dst} dev {self.row.dev}: kernel lladdr {self.row.lladdr} "
                f"{'/'.join(self.row.state)}, map lladdr {self.map_row.lladdr} {'/'.join(self.map_row.state)}")


def kernel_entries(netns_name=None, iface_names=None):
    """Dump the kernel's eligible neighbors: ``{(ifindex, dst): (lladdr, state, flags)}``."""
    source = KernelSource(netns_name)
    try:
        table = NeighborTable()
        if iface_names is not None:
            links = {m.ifname: m.ifindex for m in source.dump_links()}
            missing = [n for n in iface_names if n not in links]
            if missing:
                raise UsageError(f"interface {missing[0]!r} not found; check 'ip link show'")
            table.set_ifindexes(links[n] for n in iface_names)
        for msg in source.dump_neighbors():
            table.apply(msg)
        return {key: tuple(entry) for key, entry in table.entries.items()}
    finally:
        source.close()


def verify(netns_name=None, pin_dir=DEFAULT_PIN_DIR, iface_names=None):
    """Compare the kernel's eligible entries with the map.

    Returns a list of Differences; an empty list means they are equal.
    MAC, NUD state and flags are compared.
    """
    require_root("neighbpf verify")
    if netns_name is not None:
        netns.netns_path(netns_name)
    kernel = kernel_entries(netns_name, iface_names)
    maps = PinnedMaps.open(pin_dir)
    try:
        in_map = maps.neigh.read_all()
    finally:
        maps.close()
    names = _ifindex_names(netns_name)
    differences = []
    for key in sorted(kernel.keys() | in_map.keys()):
        if key not in in_map:
            differences.append(Difference("missing", _row(key, kernel[key], names)))
        elif key not in kernel:
            differences.append(Difference("extra", _row(key, in_map[key], names)))
        elif kernel[key] != in_map[key]:
            differences.append(Difference("different", _row(key, kernel[key], names),
                                          _row(key, in_map[key], names)))
    return differences


def stats(pin_dir=DEFAULT_PIN_DIR):
    """Return the XDP counters and, when a daemon runs, its counters.

    ``{"xdp": {...}, "daemon": {...} or None}``. The XDP counters come from
    the pinned per-CPU map, so they are there without any daemon.
    """
    require_root("neighbpf stats")
    maps = PinnedMaps.open(pin_dir)
    try:
        xdp = maps.stats.read()
    finally:
        maps.close()
    daemon = None
    try:
        with open(stats_path(pin_dir)) as f:
            daemon = json.load(f)
    except FileNotFoundError:
        pass
    # A daemon rewrites the file every second: an old file, or one whose pid
    # is gone, was left by a daemon that was killed.
    if daemon is not None:
        age_s = time.time() - daemon.get("updated", 0)
        if age_s > STALE_STATS_S or not os.path.exists(f"/proc/{daemon.get('pid', 0)}"):
            daemon = None
    return {"xdp": xdp, "daemon": daemon}
