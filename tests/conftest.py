"""Shared pytest rules for neighbpf's test markers.

- ``integration`` tests need root (network namespaces, BPF, XDP) and are
  skipped with that reason otherwise.
- ``vm`` tests change global kernel state, such as sysctls that every
  namespace shares, so they run only inside the test VM that
  ``tests/vm/run.sh`` boots. Its guest script sets ``NEIGHBPF_IN_VM=1``.
  A ``vm`` test needs root too.
"""

import os

import pytest

IN_VM_ENV = "NEIGHBPF_IN_VM"


def in_test_vm():
    """Return True inside the VM that tests/vm/run.sh boots."""
    return os.environ.get(IN_VM_ENV) == "1"


def pytest_collection_modifyitems(config, items):
    is_root = os.geteuid() == 0
    skip_not_root = pytest.mark.skip(reason="needs root for network namespaces and BPF; run with sudo")
    skip_not_vm = pytest.mark.skip(
        reason=f"changes global kernel state; runs only in the test VM ({IN_VM_ENV}=1), start it with tests/vm/run.sh"
    )
    for item in items:
        is_vm = item.get_closest_marker("vm") is not None
        is_integration = item.get_closest_marker("integration") is not None
        if is_vm and not in_test_vm():
            item.add_marker(skip_not_vm)
        elif (is_vm or is_integration) and not is_root:
            item.add_marker(skip_not_root)
