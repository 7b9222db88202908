"""Find kernel headers for bcc's compiler.

bcc compiles C at run time and wants the running kernel's build tree at
``/lib/modules/$(uname -r)/build``. neighbpf's programs use only UAPI
headers, so any recent kernel's headers serve. When the running kernel
ships none (a custom or cloud kernel), Debian's split header packages
(``linux-headers-<ver>-amd64`` plus ``linux-headers-<ver>-common``) are
joined into one tree of symlinks under ``/run/neighbpf`` and bcc is
pointed at it through ``BCC_KERNEL_SOURCE``. Nothing outside ``/run`` is
changed.
"""

import glob
import logging
import os
import re

from .errors import UsageError

log = logging.getLogger(__name__)

HEADERS_RUN_DIR = "/run/neighbpf/kernel-headers"
_KCONFIG = "include/linux/kconfig.h"


def _has_headers(tree):
    return os.path.isfile(os.path.join(tree, _KCONFIG))


def _version_key(path):
    return [int(n) for n in re.findall(r"\d+", os.path.basename(path))]


def _find_debian_split_headers():
    """Return (arch_tree, common_tree) of the newest Debian header pair."""
    for arch_tree in sorted(glob.glob("/usr/src/linux-headers-*-amd64"), key=_version_key, reverse=True):
        common_tree = arch_tree[: -len("amd64")] + "common"
        if os.path.isdir(os.path.join(arch_tree, "include", "generated")) and _has_headers(common_tree):
            return arch_tree, common_tree
    return None


def _link_entries(target_dir, *source_dirs):
    os.makedirs(target_dir, exist_ok=True)
    for source_dir in source_dirs:
        for name in os.listdir(source_dir):
            link = os.path.join(target_dir, name)
            if not os.path.lexists(link):
                os.symlink(os.path.join(source_dir, name), link)


def _join_split_headers(arch_tree, common_tree):
    """Build a tree that has both the generated and the common headers."""
    tree = os.path.join(HEADERS_RUN_DIR, os.path.basename(arch_tree))
    if _has_headers(tree):
        return tree
    _link_entries(os.path.join(tree, "include"),
                  os.path.join(common_tree, "include"), os.path.join(arch_tree, "include"))
    _link_entries(os.path.join(tree, "arch", "x86", "include"),
                  os.path.join(common_tree, "arch", "x86", "include"),
                  os.path.join(arch_tree, "arch", "x86", "include"))
    return tree


def ensure_kernel_headers():
    """Make sure bcc can find kernel headers, or raise UsageError.

    Leaves the environment alone when ``BCC_KERNEL_SOURCE`` is already set
    or the running kernel has its own build tree. Otherwise sets
    ``BCC_KERNEL_SOURCE`` for this process and returns the tree it chose.
    """
    if os.environ.get("BCC_KERNEL_SOURCE"):
        return os.environ["BCC_KERNEL_SOURCE"]
    release = os.uname().release
    own_tree = f"/lib/modules/{release}/build"
    if _has_headers(own_tree) or os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return own_tree
    pair = _find_debian_split_headers()
    if pair is None:
        raise UsageError(
            f"no kernel headers for bcc: {own_tree} is missing and no Debian header "
            "package was found; install them with 'apt-get install linux-headers-amd64'"
        )
    tree = _join_split_headers(*pair)
    os.environ["BCC_KERNEL_SOURCE"] = tree
    log.info("kernel %s has no headers; bcc uses %s", release, pair[0])
    return tree
