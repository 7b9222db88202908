"""PinnedMaps against real BPF maps pinned under /sys/fs/bpf.

Each test pins its maps in a directory of its own (nbt<pid>p<n>), which
the fixture removes afterwards.
"""

import ctypes
import errno
import logging
import os
import socket
import stat
import subprocess
import sys

import pytest
from bcc.libbcc import lib

from neighbpf import abi
from neighbpf.bpfmap import BPF_MAP_TYPE_HASH, PinnedMaps, default_neigh_max_entries
from neighbpf.errors import AbiMismatchError, UsageError
from nslab import netns_lab, pin_dir  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

NUD_REACHABLE = 0x02
NUD_STALE = 0x04
NUD_PERMANENT = 0x80
NTF_ROUTER = 1 << 7


def neigh_item(index, ifindex=2, nud_state=NUD_REACHABLE, mac_tag=0):
    """Return one ((ifindex, dst4), (lladdr, nud_state, ntf_flags)) item for 198.18.x.y."""
    dst4 = socket.inet_aton(f"198.18.{index // 250}.{index % 250 + 1}")
    lladdr = bytes([0x02, mac_tag, 0, 0, index // 256, index % 256])
    return (ifindex, dst4), (lladdr, nud_state, NTF_ROUTER if index % 7 == 0 else 0)


def write_meta_version(pin_dir, version):
    """Overwrite meta.abi_version of the pinned meta map, as another neighbpf build would."""
    fd = lib.bpf_obj_get(os.path.join(pin_dir, abi.PIN_META).encode())
    assert fd >= 0, os.strerror(ctypes.get_errno())
    try:
        meta = abi.Meta(abi_version=version)
        result = lib.bpf_update_elem(fd, ctypes.byref(ctypes.c_uint32(0)), ctypes.byref(meta), 0)
        assert result == 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(fd)


def test_open_creates_pins(pin_dir):
    with PinnedMaps.open(pin_dir, create=True, max_entries=128) as maps:
        assert maps.pin_dir == pin_dir
        assert maps.abi_version() == abi.ABI_VERSION
        assert maps.neigh.max_entries == 128
        assert maps.routes.max_entries == abi.ROUTES4_MAX_ENTRIES
        assert maps.ifaces.max_entries == abi.IFACES_MAX_ENTRIES
        assert maps.stats.read() == {"hits": 0, "misses": 0, "passes": 0, "errors": 0}
    assert stat.S_IMODE(os.stat(pin_dir).st_mode) == 0o700
    assert sorted(os.listdir(pin_dir)) == sorted(abi.PIN_NAMES)
    for name in abi.PIN_NAMES:
        assert stat.S_IMODE(os.stat(os.path.join(pin_dir, name)).st_mode) == 0o600, name


def test_default_max_entries_covers_gc_thresh3():
    with open("/proc/sys/net/ipv4/neigh/default/gc_thresh3") as f:
        gc_thresh3 = int(f.read())
    max_entries = default_neigh_max_entries()
    assert max_entries >= gc_thresh3
    assert max_entries >= 1024
    assert max_entries & (max_entries - 1) == 0


def test_reopen_keeps_entries_and_size(pin_dir):
    items = [neigh_item(i) for i in range(20)]
    with PinnedMaps.open(pin_dir, create=True, max_entries=64) as maps:
        assert maps.neigh.update_batch(items).written == 20

    with PinnedMaps.open(pin_dir, create=True, max_entries=4096) as maps:
        assert maps.neigh.max_entries == 64
        assert maps.neigh.read_all() == dict(items)
    with PinnedMaps.open(pin_dir) as maps:
        assert maps.neigh.read_all() == dict(items)


def test_open_without_pins(pin_dir):
    with pytest.raises(UsageError, match=f"no neighbpf maps pinned at {pin_dir}; start 'neighbpf run'"):
        PinnedMaps.open(pin_dir)
    assert not os.path.exists(pin_dir)


def test_open_outside_bpffs(tmp_path):
    with pytest.raises(UsageError, match="mount -t bpf bpf /sys/fs/bpf"):
        PinnedMaps.open(str(tmp_path / "neighbpf"), create=True)


def test_open_as_non_root(pin_dir):
    code = "from neighbpf.bpfmap import PinnedMaps; PinnedMaps.open(%r, create=True)" % pin_dir
    completed = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
        capture_output=True, text=True, cwd=os.path.dirname(abi.BPF_SOURCE_DIR))
    assert completed.returncode != 0
    assert "UsageError" in completed.stderr
    assert "needs root" in completed.stderr
    assert not os.path.exists(pin_dir)


def test_abi_version_mismatch(pin_dir):
    PinnedMaps.open(pin_dir, create=True, max_entries=64).close()
    write_meta_version(pin_dir, abi.ABI_VERSION + 1)

    with pytest.raises(AbiMismatchError) as raised:
        PinnedMaps.open(pin_dir, create=True)
    message = str(raised.value)
    assert f"ABI version {abi.ABI_VERSION + 1}" in message
    assert pin_dir in message
    assert f"remove {pin_dir}" in message
    assert "--pin-dir" in message


def test_value_size_mismatch(pin_dir):
    os.makedirs(pin_dir, mode=0o700)
    path = os.path.join(pin_dir, abi.PIN_NEIGH4)
    # A neigh4 whose value is 8 bytes, as an older layout could have been.
    fd = lib.bcc_create_map(BPF_MAP_TYPE_HASH, b"neigh4", 8, 8, 16, 0)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    try:
        assert lib.bpf_obj_pin(fd, path.encode()) == 0
    finally:
        os.close(fd)

    with pytest.raises(AbiMismatchError, match=f"pinned map {path} has type 1, key size 8, value size 8"):
        PinnedMaps.open(pin_dir, create=True)
    # Nothing else was created next to the mismatched pin.
    assert os.listdir(pin_dir) == [abi.PIN_NEIGH4]


@pytest.mark.parametrize("batch_supported", [True, False], ids=["batch", "single"])
def test_neigh_round_trip(pin_dir, batch_supported):
    items = [neigh_item(i, ifindex=2 + i % 3) for i in range(300)]
    with PinnedMaps.open(pin_dir, create=True, max_entries=512) as maps:
        maps.neigh.batch_supported = batch_supported
        result = maps.neigh.update_batch(items)
        assert result.written == 300
        assert result.failed == []
        assert maps.neigh.read_all() == dict(items)

        changed = [neigh_item(i, ifindex=2 + i % 3, nud_state=NUD_STALE, mac_tag=9) for i in range(0, 300, 2)]
        assert maps.neigh.update_batch(changed).written == 150
        expected = dict(items)
        expected.update(dict(changed))
        assert maps.neigh.read_all() == expected

        removed = [key for key, _ in items[:100]]
        absent = [neigh_item(1000 + i)[0] for i in range(5)]
        assert maps.neigh.delete_batch(removed[:50] + absent + removed[50:]) == 100
        for key in removed:
            del expected[key]
        assert maps.neigh.read_all() == expected
        assert maps.neigh.batch_supported == batch_supported


def test_delete_missing_keys(pin_dir):
    with PinnedMaps.open(pin_dir, create=True, max_entries=64) as maps:
        assert maps.neigh.delete_batch([neigh_item(i)[0] for i in range(10)]) == 0
        assert maps.neigh.delete_batch([]) == 0
        assert maps.neigh.read_all() == {}


def test_read_all_fallback_matches_batch(pin_dir):
    items = [neigh_item(i) for i in range(1500)]
    with PinnedMaps.open(pin_dir, create=True, max_entries=2048) as maps:
        maps.neigh.update_batch(items)
        batched = maps.neigh.read_all()
        maps.neigh.batch_supported = False
        walked = maps.neigh.read_all()
    assert batched == dict(items)
    assert walked == dict(items)


def test_full_map_keeps_entries(pin_dir, caplog):
    capacity = 16
    initial = [neigh_item(i, nud_state=NUD_PERMANENT) for i in range(10)]
    new = [neigh_item(100 + i) for i in range(10)]
    updates = [neigh_item(i, nud_state=NUD_STALE, mac_tag=7) for i in range(5)]

    with PinnedMaps.open(pin_dir, create=True, max_entries=capacity) as maps:
        assert maps.neigh.update_batch(initial).written == 10
        with caplog.at_level(logging.WARNING, logger="neighbpf.bpfmap"):
            result = maps.neigh.update_batch(new + updates)
        stored = maps.neigh.read_all()

    fitting = new[:capacity - len(initial)]
    rejected = new[capacity - len(initial):]
    assert result.written == len(fitting) + len(updates)
    assert result.failed == [(key, errno.E2BIG) for key, _ in rejected]
    expected = dict(initial)
    expected.update(dict(fitting))
    expected.update(dict(updates))
    assert stored == expected
    assert any("is full (max_entries 16)" in record.getMessage() for record in caplog.records)


def test_routes_replace_and_longest_match(pin_dir):
    def network(text):
        return socket.inet_aton(text)

    with PinnedMaps.open(pin_dir, create=True, max_entries=64) as maps:
        # replace_all() clears host bits: 198.18.1.1/24 is stored as 198.18.1.0/24.
        maps.routes.replace_all({(network("198.18.1.1"), 24): 2, (network("198.18.0.0"), 15): 3})
        assert maps.routes.read_all() == {(network("198.18.1.0"), 24): 2, (network("198.18.0.0"), 15): 3}

        for address, ifindex in (("198.18.1.77", 2), ("198.19.4.4", 3), ("198.20.0.1", None)):
            key = abi.RouteKey(prefixlen=32)
            key.ip4[:] = network(address)
            value = abi.RouteValue()
            found = maps.routes._lookup(key, value)
            assert (value.ifindex if found else None) == ifindex, address

        maps.routes.replace_all({(network("198.18.0.0"), 15): 4})
        assert maps.routes.read_all() == {(network("198.18.0.0"), 15): 4}


def test_ifaces_replace_all(pin_dir):
    with PinnedMaps.open(pin_dir, create=True, max_entries=64) as maps:
        maps.ifaces.replace_all({2: b"\x02\x00\x00\x00\x00\x02", 3: b"\x02\x00\x00\x00\x00\x03"})
        assert maps.ifaces.read_all() == {2: b"\x02\x00\x00\x00\x00\x02", 3: b"\x02\x00\x00\x00\x00\x03"}
        maps.ifaces.replace_all({3: b"\x02\x00\x00\x00\x00\x33"})
        assert maps.ifaces.read_all() == {3: b"\x02\x00\x00\x00\x00\x33"}
        with pytest.raises(ValueError, match="not 6 bytes"):
            maps.ifaces.replace_all({4: b"\x02\x00"})


def test_unpin_removes_directory(pin_dir):
    maps = PinnedMaps.open(pin_dir, create=True, max_entries=64)
    maps.neigh.update_batch([neigh_item(1)])
    maps.unpin()
    assert not os.path.exists(pin_dir)
    # The open fds stay usable until close().
    assert maps.neigh.read_all() == dict([neigh_item(1)])
    maps.close()
    with pytest.raises(UsageError, match="no neighbpf maps pinned"):
        PinnedMaps.open(pin_dir)
