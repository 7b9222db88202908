"""The Python view of the map ABI against bpf/neighbpf.h as gcc compiles it.

A small C program includes the header with userspace <linux/types.h> and
prints each constant, struct size and field offset. The tests compare
those with neighbpf.abi, so a change on one side only fails here.
"""

import ctypes
import re
import shutil
import subprocess

import pytest

from neighbpf import abi

pytestmark = pytest.mark.unit

NEIGHBOUR_UAPI = "/usr/include/linux/neighbour.h"

STRUCTS = {
    "neighbpf_neigh_key": (abi.NeighKey, ["ifindex", "ip4"]),
    "neighbpf_neigh_value": (abi.NeighValue, ["lladdr", "nud_state", "ntf_flags", "reserved"]),
    "neighbpf_route_key": (abi.RouteKey, ["prefixlen", "ip4"]),
    "neighbpf_route_value": (abi.RouteValue, ["ifindex", "reserved"]),
    "neighbpf_iface_value": (abi.IfaceValue, ["lladdr", "reserved", "flags"]),
    "neighbpf_meta": (abi.Meta, ["abi_version", "reserved"]),
}

INT_CONSTANTS = {
    "NEIGHBPF_ABI_VERSION": abi.ABI_VERSION,
    "NEIGHBPF_NUD_VALID": abi.NUD_VALID,
    "NEIGHBPF_ROUTES4_MAX_ENTRIES": abi.ROUTES4_MAX_ENTRIES,
    "NEIGHBPF_IFACES_MAX_ENTRIES": abi.IFACES_MAX_ENTRIES,
    "NEIGHBPF_META_MAX_ENTRIES": abi.META_MAX_ENTRIES,
    "NEIGHBPF_XDP_STATS_MAX_ENTRIES": abi.XDP_STATS_MAX_ENTRIES,
    "NEIGHBPF_STAT_HIT": abi.Stat.HIT,
    "NEIGHBPF_STAT_MISS": abi.Stat.MISS,
    "NEIGHBPF_STAT_PASS": abi.Stat.PASS,
    "NEIGHBPF_STAT_ERROR": abi.Stat.ERROR,
    "NEIGHBPF_STAT_COUNT": abi.STAT_COUNT,
}

STRING_CONSTANTS = {
    "NEIGHBPF_PIN_DIR_DEFAULT": abi.PIN_DIR_DEFAULT,
    "NEIGHBPF_PIN_NEIGH4": abi.PIN_NEIGH4,
    "NEIGHBPF_PIN_ROUTES4": abi.PIN_ROUTES4,
    "NEIGHBPF_PIN_IFACES": abi.PIN_IFACES,
    "NEIGHBPF_PIN_META": abi.PIN_META,
    "NEIGHBPF_PIN_XDP_STATS": abi.PIN_XDP_STATS,
}

# The states that the kernel's NUD_VALID (include/net/neighbour.h) contains.
NUD_VALID_STATES = ["NUD_PERMANENT", "NUD_NOARP", "NUD_REACHABLE", "NUD_PROBE", "NUD_STALE", "NUD_DELAY"]


def kernel_nud_names():
    """Return every NUD_* macro name that the installed UAPI header defines."""
    with open(NEIGHBOUR_UAPI) as f:
        return re.findall(r"^#define\s+(NUD_[A-Z_]+)\s", f.read(), re.MULTILINE)


def c_program():
    lines = [
        "#include <stddef.h>",
        "#include <stdio.h>",
        "#include <linux/types.h>",
        "#include <linux/neighbour.h>",
        '#include "neighbpf.h"',
        "int main(void) {",
    ]
    for struct_name, (_, fields) in STRUCTS.items():
        lines.append(f'printf("size {struct_name} %zu\\n", sizeof(struct {struct_name}));')
        for field in fields:
            lines.append(f'printf("offset {struct_name}.{field} %zu\\n", offsetof(struct {struct_name}, {field}));')
            lines.append(f'printf("fieldsize {struct_name}.{field} %zu\\n", '
                         f'sizeof(((struct {struct_name} *)0)->{field}));')
    for name in INT_CONSTANTS:
        lines.append(f'printf("int {name} %lld\\n", (long long)({name}));')
    for name in STRING_CONSTANTS:
        lines.append(f'printf("str {name} %s\\n", {name});')
    for name in kernel_nud_names():
        lines.append(f'printf("nud {name} %lld\\n", (long long)({name}));')
    lines.append("return 0; }")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def header_layout(tmp_path_factory):
    """Compile and run the C program; return {(kind, name): value} of its output."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to compile bpf/neighbpf.h (Debian package gcc)")
    workdir = tmp_path_factory.mktemp("abi")
    source = workdir / "layout.c"
    binary = workdir / "layout"
    source.write_text(c_program())
    compiled = subprocess.run(["gcc", "-std=c11", "-Wall", "-Werror", f"-I{abi.BPF_SOURCE_DIR}",
                               "-o", str(binary), str(source)], capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr
    output = subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout
    layout = {}
    for line in output.splitlines():
        kind, name, value = line.split(" ", 2)
        layout[(kind, name)] = value
    return layout


@pytest.mark.parametrize("struct_name", sorted(STRUCTS))
def test_struct_size_matches_header(header_layout, struct_name):
    struct_type, _ = STRUCTS[struct_name]
    assert ctypes.sizeof(struct_type) == int(header_layout[("size", struct_name)])


@pytest.mark.parametrize("struct_name", sorted(STRUCTS))
def test_struct_fields_match_header(header_layout, struct_name):
    struct_type, fields = STRUCTS[struct_name]
    assert [name for name, _ in struct_type._fields_] == fields
    for field in fields:
        descriptor = getattr(struct_type, field)
        assert descriptor.offset == int(header_layout[("offset", f"{struct_name}.{field}")]), field
        assert descriptor.size == int(header_layout[("fieldsize", f"{struct_name}.{field}")]), field


@pytest.mark.parametrize("name", sorted(INT_CONSTANTS))
def test_int_constant_matches_header(header_layout, name):
    assert int(header_layout[("int", name)]) == INT_CONSTANTS[name]


@pytest.mark.parametrize("name", sorted(STRING_CONSTANTS))
def test_string_constant_matches_header(header_layout, name):
    assert header_layout[("str", name)] == STRING_CONSTANTS[name]


def test_pin_names_complete():
    assert set(abi.PIN_NAMES) == set(STRING_CONSTANTS.values()) - {abi.PIN_DIR_DEFAULT}
    assert len(abi.PIN_NAMES) == 5


def test_every_nud_state_fits(header_layout):
    nud_names = kernel_nud_names()
    field_bits = 8 * abi.NeighValue.nud_state.size
    assert "NUD_PERMANENT" in nud_names
    for name in nud_names:
        value = int(header_layout[("nud", name)])
        assert 0 <= value < (1 << field_bits), f"{name}={value:#x} does not fit {field_bits} bits"
        stored = abi.NeighValue(nud_state=value)
        assert stored.nud_state == value, name


def test_nud_valid_matches_kernel(header_layout):
    expected = 0
    for name in NUD_VALID_STATES:
        expected |= int(header_layout[("nud", name)])
    assert abi.NUD_VALID == expected
