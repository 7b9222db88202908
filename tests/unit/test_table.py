"""The ingest rules of the neighbor table, case by case and as a model."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neighbpf import codec
from neighbpf.table import IGNORE, NUD_STATES, REMOVE, UPSERT, NeighborTable, decide

pytestmark = pytest.mark.unit

MAC = bytes.fromhex("020000000001")
DST = bytes([198, 18, 0, 7])


def neigh(msg_type=codec.RTM_NEWNEIGH, family=codec.AF_INET, ifindex=3, state=codec.NUD_REACHABLE,
          flags=0, ndm_type=codec.RTN_UNICAST, dst=DST, lladdr=MAC, portid=0):
    return codec.NeighMessage(msg_type=msg_type, nlmsg_flags=0, seq=0, portid=portid, family=family,
                              ifindex=ifindex, state=state, flags=flags, ndm_type=ndm_type, dst=dst,
                              lladdr=lladdr, flags_ext=0)


# Every NUD state the kernel defines, with the decision for an RTM_NEWNEIGH
# that carries a good MAC. NUD_VALID in include/net/neighbour.h is
# PERMANENT | NOARP | REACHABLE | PROBE | STALE | DELAY.
NUD_DECISIONS = {
    codec.NUD_NONE: REMOVE,
    codec.NUD_INCOMPLETE: REMOVE,
    codec.NUD_REACHABLE: UPSERT,
    codec.NUD_STALE: UPSERT,
    codec.NUD_DELAY: UPSERT,
    codec.NUD_PROBE: UPSERT,
    codec.NUD_FAILED: REMOVE,
    codec.NUD_NOARP: UPSERT,
    codec.NUD_PERMANENT: UPSERT,
}


def test_every_nud_state_has_decision():
    assert set(NUD_DECISIONS) == set(NUD_STATES)
    assert set(NUD_STATES) == set(codec.NUD_STATE_NAMES)


@pytest.mark.parametrize("state", sorted(NUD_DECISIONS))
def test_nud_state_decision(state):
    decision, _reason = decide(neigh(state=state))
    assert decision == NUD_DECISIONS[state]


CASES = [
    # (name, message, decision, reason)
    ("delete without lladdr", neigh(msg_type=codec.RTM_DELNEIGH, lladdr=None), REMOVE, "deleted"),
    ("delete of a valid entry", neigh(msg_type=codec.RTM_DELNEIGH), REMOVE, "deleted"),
    ("new without lladdr", neigh(lladdr=None), REMOVE, "no_lladdr"),
    ("zero-byte lladdr", neigh(lladdr=b""), REMOVE, "lladdr_not_ethernet"),
    ("4-byte lladdr", neigh(lladdr=b"\x01\x02\x03\x04"), REMOVE, "lladdr_not_ethernet"),
    ("16-byte lladdr", neigh(lladdr=bytes(range(1, 17))), REMOVE, "lladdr_not_ethernet"),
    ("20-byte lladdr", neigh(lladdr=bytes(range(1, 21))), REMOVE, "lladdr_not_ethernet"),
    ("all-zero MAC", neigh(lladdr=bytes(6)), REMOVE, "lladdr_zero"),
    ("proxy record", neigh(flags=codec.NTF_PROXY), IGNORE, "proxy"),
    ("multicast type", neigh(ndm_type=codec.RTN_MULTICAST, state=codec.NUD_NOARP), IGNORE, "not_unicast"),
    ("broadcast type", neigh(ndm_type=codec.RTN_BROADCAST, state=codec.NUD_NOARP), IGNORE, "not_unicast"),
    ("AF_INET6 entry", neigh(family=codec.AF_INET6, dst=bytes(16)), IGNORE, "family"),
    ("AF_BRIDGE fdb", neigh(family=codec.AF_BRIDGE, dst=None), IGNORE, "family"),
    ("RTM_GETNEIGH app_solicit", neigh(msg_type=codec.RTM_GETNEIGH), IGNORE, "msg_type"),
    ("extern learned", neigh(flags=codec.NTF_EXT_LEARNED), UPSERT, "valid"),
    ("router flag", neigh(flags=codec.NTF_ROUTER), UPSERT, "valid"),
    ("link-local dst", neigh(dst=bytes([169, 254, 1, 1])), UPSERT, "valid"),
    ("missing dst", neigh(dst=None), IGNORE, "no_dst"),
]


@pytest.mark.parametrize("message,decision,reason", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_ingest_rule(message, decision, reason):
    assert decide(message) == (decision, reason)


def test_upsert_then_delete_queues_map_work():
    table = NeighborTable()
    table.apply(neigh())
    assert table.take_pending() == {(3, DST): (MAC, codec.NUD_REACHABLE, 0)}
    table.apply(neigh(msg_type=codec.RTM_DELNEIGH, lladdr=None))
    assert table.take_pending() == {(3, DST): None}
    assert len(table) == 0


def test_same_ip_on_two_interfaces_kept_apart():
    table = NeighborTable()
    table.apply(neigh(ifindex=3))
    table.apply(neigh(ifindex=4, lladdr=bytes.fromhex("020000000002")))
    table.apply(neigh(ifindex=3, msg_type=codec.RTM_DELNEIGH, lladdr=None))
    assert list(table.entries) == [(4, DST)]


def test_unchanged_upsert_queues_nothing():
    table = NeighborTable()
    table.apply(neigh())
    table.take_pending()
    table.apply(neigh())
    assert table.take_pending() == {}


def test_ignored_messages_counted_by_reason():
    table = NeighborTable()
    table.apply(neigh(flags=codec.NTF_PROXY))
    table.apply(neigh(family=codec.AF_INET6, dst=bytes(16)))
    table.apply(neigh(family=codec.AF_INET6, dst=bytes(16)))
    assert table.counters["ignored_proxy"] == 1
    assert table.counters["ignored_family"] == 2
    assert len(table) == 0


def test_dump_sweep_removes_unseen_keys():
    table = NeighborTable()
    other = bytes([198, 18, 0, 8])
    table.apply(neigh())
    table.apply(neigh(dst=other))
    table.take_pending()
    table.begin_dump()
    table.apply(neigh(dst=other))
    assert table.end_dump() == 1
    assert table.take_pending() == {(3, DST): None}
    assert list(table.entries) == [(3, other)]


def test_filtered_sweep_spares_other_interfaces():
    table = NeighborTable()
    table.apply(neigh(ifindex=3))
    table.apply(neigh(ifindex=4))
    table.begin_dump()
    assert table.end_dump(ifindex=4) == 1
    assert list(table.entries) == [(3, DST)]


def test_purge_ifindex():
    table = NeighborTable()
    table.apply(neigh(ifindex=3))
    table.apply(neigh(ifindex=3, dst=bytes([198, 18, 0, 9])))
    table.apply(neigh(ifindex=4))
    assert table.purge_ifindex(3) == 2
    assert list(table.entries) == [(4, DST)]


def test_interface_filter():
    table = NeighborTable(ifindexes={4})
    table.apply(neigh(ifindex=3))
    table.apply(neigh(ifindex=4))
    assert list(table.entries) == [(4, DST)]
    assert table.counters["ignored_interface"] == 1


# A plain reference model of the ingest rules: a dict that a valid new
# message sets and anything else for the key clears.
messages = st.builds(
    neigh,
    msg_type=st.sampled_from([codec.RTM_NEWNEIGH, codec.RTM_DELNEIGH, codec.RTM_GETNEIGH]),
    family=st.sampled_from([codec.AF_INET, codec.AF_INET, codec.AF_INET6]),
    ifindex=st.integers(1, 3),
    state=st.sampled_from(NUD_STATES),
    flags=st.sampled_from([0, 0, codec.NTF_PROXY, codec.NTF_EXT_LEARNED]),
    ndm_type=st.sampled_from([codec.RTN_UNICAST, codec.RTN_UNICAST, codec.RTN_MULTICAST]),
    dst=st.sampled_from([bytes([198, 18, 0, i]) for i in range(1, 4)]),
    lladdr=st.one_of(st.none(), st.binary(min_size=6, max_size=6), st.binary(max_size=20)),
)


def reference_apply(model, msg):
    if (msg.family != codec.AF_INET or msg.msg_type == codec.RTM_GETNEIGH
            or msg.flags & codec.NTF_PROXY or msg.ndm_type != codec.RTN_UNICAST):
        return
    key = (msg.ifindex, msg.dst)
    valid_states = (codec.NUD_PERMANENT, codec.NUD_NOARP, codec.NUD_REACHABLE,
                    codec.NUD_PROBE, codec.NUD_STALE, codec.NUD_DELAY)
    if (msg.msg_type == codec.RTM_NEWNEIGH and msg.state in valid_states
            and msg.lladdr is not None and len(msg.lladdr) == 6 and any(msg.lladdr)):
        model[key] = (msg.lladdr, msg.state, msg.flags)
    else:
        model.pop(key, None)


@settings(max_examples=300, deadline=None)
@given(st.lists(messages, max_size=40))
def test_table_matches_reference_model(sequence):
    table = NeighborTable()
    model = {}
    mirrored = {}
    for msg in sequence:
        table.apply(msg)
        reference_apply(model, msg)
        for key, entry in table.take_pending().items():
            if entry is None:
                mirrored.pop(key, None)
            else:
                mirrored[key] = tuple(entry)
    assert {k: tuple(v) for k, v in table.entries.items()} == model
    assert mirrored == model
