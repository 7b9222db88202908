"""Enter a named network namespace for the calling thread only.

``ip netns exec`` remounts /sys, so pins made under it vanish with the
process. neighbpf instead enters the namespace with setns(2) just long
enough to create its sockets and XDP attachments: a socket keeps the
namespace it was created in, and the bpffs mount of the caller stays in
place. setns(2) changes only the calling thread, so other threads of the
process are not affected.
"""

import contextlib
import ctypes
import errno
import os
import threading

from .errors import UsageError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_lock = threading.RLock()


def netns_path(name):
    """Return the bind-mount path of namespace ``name`` or raise UsageError."""
    if not name or "/" in name or name in (".", ".."):
        raise UsageError(f"invalid network namespace name {name!r}; use a name that 'ip netns list' shows")
    path = os.path.join(NETNS_RUN_DIR, name)
    if not os.path.exists(path):
        raise UsageError(f"network namespace {name!r} not found; create it with 'ip netns add {name}' or check 'ip netns list'")
    return path


def _setns(fd, description):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        if err == errno.EPERM:
            raise UsageError(f"entering network namespace {description} is not permitted; run as root")
        raise OSError(err, f"setns({description}): {os.strerror(err)}")


@contextlib.contextmanager
def entered(name):
    """Run the body of a ``with`` block inside namespace ``name``.

    ``None`` means the caller's own namespace, and then nothing changes.
    Sockets created inside the block stay in ``name`` after it ends.
    """
    if name is None:
        yield
        return
    path = netns_path(name)
    with _lock:
        own_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target_fd = os.open(path, os.O_RDONLY)
            try:
                _setns(target_fd, name)
            finally:
                os.close(target_fd)
            try:
                yield
            finally:
                _setns(own_fd, "of the caller")
        finally:
            os.close(own_fd)
