"""Keep the pinned BPF maps equal to the kernel: dumps, events, sweeps.

``Mirror`` joins a KernelSource, the authoritative NeighborTable and the
PinnedMaps, and implements the sync protocol:

- the event groups are joined before the first dump;
- a complete dump is applied, then the events that queued meanwhile;
- every complete dump ends with a sweep;
- an overrun (events lost) leads to a new dump;
- a deleted link is purged;
- a carrier or MAC change triggers a dump filtered to that interface.

It also mirrors each interface's connected IPv4 prefixes and MAC address,
which the XDP forward stage needs.
"""

import collections
import errno
import ipaddress
import logging
import time
from typing import NamedTuple

from . import codec
from .kernel import KernelSource, Overrun
from .table import NeighborTable

log = logging.getLogger(__name__)


class LinkInfo(NamedTuple):
    name: str
    lladdr: bytes
    ifi_flags: int


class SyncResult(NamedTuple):
    """Counts and timings of one complete dump (``neighbpf sync --json``)."""

    entries: int
    swept: int
    dump_seconds: float
    mirror_seconds: float
    # Entries of the table that the map rejected, such as a full map's.
    not_mirrored: int = 0


EVENT_COUNTER_NAMES = {
    codec.RTM_NEWNEIGH: "event_newneigh",
    codec.RTM_DELNEIGH: "event_delneigh",
    codec.RTM_GETNEIGH: "event_getneigh",
    codec.RTM_NEWLINK: "event_newlink",
    codec.RTM_DELLINK: "event_dellink",
    codec.RTM_NEWADDR: "event_newaddr",
    codec.RTM_DELADDR: "event_deladdr",
}


def _ip4_key(addr_bytes):
    return ipaddress.IPv4Address(addr_bytes)


class Mirror:
    """Mirror one namespace's IPv4 neighbors into pinned maps.

    ``iface_names`` limits the mirror to those interfaces, and ``None``
    mirrors every interface. Interfaces are followed by name, so one that
    is deleted and created again is mirrored under its new ifindex.
    """

    def __init__(self, maps, source=None, netns_name=None, iface_names=None):
        self.maps = maps
        self.source = source or KernelSource(netns_name)
        self.iface_names = None if iface_names is None else list(iface_names)
        self.table = NeighborTable()
        self.links = {}
        self.addresses = {}
        self.counters = collections.Counter()
        # Table keys that the map rejected at their last write, as a full
        # map does. They are retried, but a reconcile does not count them
        # as drift.
        self.unmirrored = set()

    def close(self):
        self.source.close()

    # Link and address state.

    def _mirrored_ifindexes(self):
        if self.iface_names is None:
            return None
        return {i for i, link in self.links.items() if link.name in self.iface_names}

    def _load_links(self):
        self.links = {}
        for msg in self.source.dump_links():
            self.links[msg.ifindex] = LinkInfo(msg.ifname or "", msg.address or b"", msg.ifi_flags)
        self.table.set_ifindexes(self._mirrored_ifindexes())

    def _load_addresses(self):
        self.addresses = {}
        for msg in self.source.dump_addresses():
            self._remember_address(msg)

    def _remember_address(self, msg):
        if msg.family != codec.AF_INET or msg.address is None or len(msg.address) != 4:
            return
        key = (msg.ifindex, msg.address, msg.prefixlen)
        if msg.msg_type == codec.RTM_DELADDR:
            self.addresses.pop(key, None)
        else:
            self.addresses[key] = True

    def missing_ifaces(self):
        """Return the requested interface names that do not exist now."""
        if self.iface_names is None:
            return []
        present = {link.name for link in self.links.values()}
        return [name for name in self.iface_names if name not in present]

    def _write_routes_and_ifaces(self):
        wanted = self._mirrored_ifindexes()
        routes = {}
        for ifindex, address, prefixlen in self.addresses:
            if prefixlen >= 32 or (wanted is not None and ifindex not in wanted):
                continue
            if ifindex not in self.links:
                continue
            network = ipaddress.IPv4Network((_ip4_key(address), prefixlen), strict=False)
            routes[(network.network_address.packed, prefixlen)] = ifindex
        ifaces = {i: link.lladdr for i, link in self.links.items()
                  if len(link.lladdr) == 6 and (wanted is None or i in wanted)}
        self.maps.routes.replace_all(routes)
        self.maps.ifaces.replace_all(ifaces)

    # Neighbor state.

    def full_resync(self, cause):
        """Dump links, addresses and neighbors, apply, sweep and flush.

        Events that queued while the dump ran stay on the event socket and
        are applied by the next ``poll()``, after the dump.
        """
        started = time.monotonic()
        self._load_links()
        self._load_addresses()
        neighbors = self.source.dump_neighbors()
        dumped = time.monotonic()
        self.table.begin_dump()
        for msg in neighbors:
            self.table.apply(msg)
        self.table.end_dump()
        self._write_routes_and_ifaces()
        # Write what differs from the map as it is now, not from the old
        # table: this also sweeps a pin left by an earlier run, and a
        # restart over a correct map writes nothing.
        self.table.take_pending()
        _, swept = self._queue_map_differences()
        self.flush()
        finished = time.monotonic()
        self.counters["resyncs"] += 1
        self.counters["resync_" + cause] += 1
        log.info("resync (%s): %d neighbors dumped, %d in table, %d swept, took %.3f s",
                 cause, len(neighbors), len(self.table), swept, finished - started)
        return SyncResult(len(self.table), swept, dumped - started, finished - dumped, len(self.unmirrored))

    def resync_ifindex(self, ifindex, cause):
        """Dump one interface's neighbors and sweep only that interface."""
        started = time.monotonic()
        neighbors = self.source.dump_neighbors(ifindex)
        self.table.begin_dump()
        for msg in neighbors:
            self.table.apply(msg)
        swept = self.table.end_dump(ifindex)
        self.flush()
        self.counters["link_resyncs"] += 1
        log.info("resync of ifindex %d (%s): %d neighbors, %d swept, took %.3f s",
                 ifindex, cause, len(neighbors), swept, time.monotonic() - started)

    def flush(self):
        """Write the table's pending changes to the map in batches."""
        pending = self.table.take_pending()
        if not pending:
            return 0
        upserts = [(key, tuple(entry)) for key, entry in pending.items() if entry is not None]
        deletes = [key for key, entry in pending.items() if entry is None]
        if deletes:
            self.maps.neigh.delete_batch(deletes)
            self.counters["map_deletes"] += len(deletes)
        if upserts:
            result = self.maps.neigh.update_batch(upserts)
            self.counters["map_updates"] += result.written
            # A key the map already rejected is retried at each reconcile;
            # count it once, when it is first rejected.
            self._count_failures([f for f in result.failed if f[0] not in self.unmirrored])
            self.unmirrored.difference_update(key for key, _ in upserts)
            self.unmirrored.update(key for key, _ in result.failed)
        if self.unmirrored:
            self.unmirrored = {key for key in self.unmirrored if key in self.table.entries}
        return len(pending)

    def _count_failures(self, failed):
        # NeighMap.update_batch() already logs the failures of each batch,
        # rate-limited, with the way to grow the map; here they are counted.
        for _key, err in failed:
            self.counters["map_full" if err in (errno.E2BIG, errno.ENOSPC) else "map_errors"] += 1

    def _queue_map_differences(self):
        """Queue map writes for every key where map and table differ.

        Returns ``(changed, extra)``: keys whose entry is missing or wrong
        in the map, and keys in the map that the table does not hold. A key
        missing because the map rejected it (``unmirrored``) is queued
        again but not counted.
        """
        in_map = self.maps.neigh.read_all()
        changed = 0
        for key, entry in self.table.entries.items():
            if in_map.get(key) != tuple(entry):
                self.table.queue(key, entry)
                if key in in_map or key not in self.unmirrored:
                    changed += 1
        extra = in_map.keys() - self.table.entries.keys()
        for key in extra:
            self.table.queue(key, None)
        return changed, len(extra)

    def reconcile(self):
        """Compare the map with the table, repair and count differences."""
        changed, extra = self._queue_map_differences()
        drift = changed + extra
        if drift:
            self.counters["drift_repaired"] += drift
            log.warning("reconcile found %d map entries that differ from the table; repairing", drift)
        self.flush()
        return drift

    # Events.

    def poll(self):
        """Apply every queued event and flush; resync after an overrun.

        Returns the number of messages applied.
        """
        try:
            messages = self.source.read_events()
        except Overrun:
            drained = self.source.drain_events()
            log.warning("event socket overrun (ENOBUFS): events were lost; drained %d datagrams, resyncing", drained)
            self.full_resync("overrun")
            return 0
        for msg in messages:
            self._apply_event(msg)
        self.flush()
        return len(messages)

    def _apply_event(self, msg):
        self.counters[EVENT_COUNTER_NAMES.get(getattr(msg, "msg_type", None), "event_other")] += 1
        if isinstance(msg, codec.NeighMessage):
            self.table.apply(msg)
        elif isinstance(msg, codec.LinkMessage):
            self._apply_link(msg)
        elif isinstance(msg, codec.AddrMessage):
            self._remember_address(msg)
            self._write_routes_and_ifaces()

    def _apply_link(self, msg):
        ifindex = msg.ifindex
        old = self.links.get(ifindex)
        if msg.msg_type == codec.RTM_DELLINK:
            self.links.pop(ifindex, None)
            self.addresses = {k: v for k, v in self.addresses.items() if k[0] != ifindex}
            purged = self.table.purge_ifindex(ifindex)
            log.info("link ifindex %d (%s) deleted: purged %d neighbors", ifindex,
                     old.name if old else "?", purged)
            self._write_routes_and_ifaces()
            return
        name = msg.ifname
        lladdr = msg.address
        if old is not None:
            name = name or old.name
            lladdr = old.lladdr if lladdr is None else lladdr
        new = LinkInfo(name or "", lladdr or b"", msg.ifi_flags)
        self.links[ifindex] = new
        was_mirrored = self.table.ifindexes is None or ifindex in self.table.ifindexes
        self.table.set_ifindexes(self._mirrored_ifindexes())
        is_mirrored = self.table.ifindexes is None or ifindex in self.table.ifindexes
        if old is None or (is_mirrored and not was_mirrored):
            if is_mirrored:
                self._write_routes_and_ifaces()
                self.resync_ifindex(ifindex, "new link")
            return
        carrier_changed = (old.ifi_flags ^ new.ifi_flags) & codec.IFF_LOWER_UP
        mac_changed = old.lladdr != new.lladdr
        if is_mirrored and (carrier_changed or mac_changed):
            self._write_routes_and_ifaces()
            self.resync_ifindex(ifindex, "carrier change" if carrier_changed else "MAC change")
