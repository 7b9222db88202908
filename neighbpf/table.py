"""The authoritative IPv4 neighbor table that the BPF map mirrors.

The table applies the ingest rules to decoded rtnetlink messages. It is
keyed by ``(ifindex, dst)`` where ``dst`` is the 4-byte IPv4 address in
network byte order: never by MAC, because several addresses may share one
MAC and one address may live on two interfaces.

Every change to the table is also recorded as pending work for the map
(``take_pending()``), coalesced per key, so that the mirror writes each
key at most once per batch.
"""

import collections
from typing import NamedTuple

from . import codec


ZERO_MAC = b"\x00" * 6

# Decisions of the ingest rules.
UPSERT = "upsert"
REMOVE = "remove"
IGNORE = "ignore"

# Every NUD state the kernel defines (include/uapi/linux/neighbour.h), so
# that a test can check that each one has a decision.
NUD_STATES = (
    codec.NUD_NONE, codec.NUD_INCOMPLETE, codec.NUD_REACHABLE, codec.NUD_STALE,
    codec.NUD_DELAY, codec.NUD_PROBE, codec.NUD_FAILED, codec.NUD_NOARP,
    codec.NUD_PERMANENT,
)


class Entry(NamedTuple):
    """A mirrored neighbor: what the map's value holds."""

    lladdr: bytes
    state: int
    flags: int


def decide(msg):
    """Apply the ingest rules to one NeighMessage.

    The sender check (only the kernel, port id 0, is trusted) happens on
    the datagram's source address before decoding, in the kernel module:
    ``nlmsg_pid`` of a notification names the process that caused the
    change, not the sender.

    Returns ``(decision, reason)``: ``UPSERT`` or ``REMOVE`` for the key
    ``(msg.ifindex, msg.dst)``, or ``IGNORE`` when the message must not
    touch the table. ``reason`` is a short counter key.
    """
    if msg.family != codec.AF_INET:
        return IGNORE, "family"
    if msg.msg_type not in (codec.RTM_NEWNEIGH, codec.RTM_DELNEIGH):
        return IGNORE, "msg_type"
    if msg.flags & codec.NTF_PROXY:
        return IGNORE, "proxy"
    if msg.ndm_type != codec.RTN_UNICAST:
        return IGNORE, "not_unicast"
    if msg.dst is None or len(msg.dst) != 4:
        return IGNORE, "no_dst"
    if msg.msg_type == codec.RTM_DELNEIGH:
        return REMOVE, "deleted"
    if not msg.state & codec.NUD_VALID:
        return REMOVE, "state_not_valid"
    if msg.lladdr is None:
        return REMOVE, "no_lladdr"
    if len(msg.lladdr) != 6:
        return REMOVE, "lladdr_not_ethernet"
    if msg.lladdr == ZERO_MAC:
        return REMOVE, "lladdr_zero"
    return UPSERT, "valid"


class NeighborTable:
    """IPv4 neighbors keyed by ``(ifindex, dst)``, built from rtnetlink.

    ``ifindexes`` limits the table to those interfaces; ``None`` accepts
    every interface. ``counters`` counts each decision by reason
    (``ignored_<reason>``, ``removed_<reason>``, ``upserted``).
    """

    def __init__(self, ifindexes=None):
        self.entries = {}
        self.ifindexes = None if ifindexes is None else set(ifindexes)
        self.counters = collections.Counter()
        self._pending = {}
        self._dump_seen = None

    def __len__(self):
        return len(self.entries)

    def set_ifindexes(self, ifindexes):
        """Limit the table to ``ifindexes`` (None: all) and drop the rest."""
        self.ifindexes = None if ifindexes is None else set(ifindexes)
        if self.ifindexes is not None:
            for key in [k for k in self.entries if k[0] not in self.ifindexes]:
                self._remove(key)

    def apply(self, msg):
        """Apply one decoded NeighMessage; return the decision taken."""
        decision, reason = decide(msg)
        if decision == IGNORE:
            self.counters["ignored_" + reason] += 1
            return decision
        key = (msg.ifindex, msg.dst)
        if self.ifindexes is not None and msg.ifindex not in self.ifindexes:
            self.counters["ignored_interface"] += 1
            return IGNORE
        if decision == UPSERT:
            entry = Entry(msg.lladdr, msg.state, msg.flags)
            if self._dump_seen is not None:
                self._dump_seen.add(key)
            if self.entries.get(key) != entry:
                self.entries[key] = entry
                self._pending[key] = entry
            self.counters["upserted"] += 1
        else:
            self.counters["removed_" + reason] += 1
            if self._dump_seen is not None:
                self._dump_seen.discard(key)
            self._remove(key)
        return decision

    def _remove(self, key):
        if self.entries.pop(key, None) is not None:
            self._pending[key] = None

    def begin_dump(self):
        """Start collecting the keys of a complete dump for the sweep."""
        self._dump_seen = set()

    def end_dump(self, ifindex=None):
        """Sweep: remove every key the dump did not contain.

        With ``ifindex`` only that interface's keys are swept, which is
        what a dump filtered to that interface allows. Returns the number
        of keys removed.
        """
        seen, self._dump_seen = self._dump_seen or set(), None
        stale = [k for k in self.entries
                 if k not in seen and (ifindex is None or k[0] == ifindex)]
        for key in stale:
            self._remove(key)
        self.counters["swept"] += len(stale)
        return len(stale)

    def abort_dump(self):
        """Forget a dump that did not complete; nothing is swept."""
        self._dump_seen = None

    def purge_ifindex(self, ifindex):
        """Remove every key of ``ifindex`` (its interface was deleted)."""
        keys = [k for k in self.entries if k[0] == ifindex]
        for key in keys:
            self._remove(key)
        self.counters["purged"] += len(keys)
        return len(keys)

    def mark_all_pending(self):
        """Queue every entry for the map again, for a repair of the mirror."""
        self._pending.update(self.entries)

    def queue(self, key, entry):
        """Queue one map write (``entry=None`` deletes) outside the rules."""
        self._pending[key] = entry

    def take_pending(self):
        """Return and clear the coalesced map work: ``{key: Entry or None}``."""
        pending, self._pending = self._pending, {}
        return pending
