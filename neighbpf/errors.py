"""Exceptions raised by neighbpf.

Lower-layer failures (errno from a syscall, a netlink error message, an
exception from bcc) are translated into these in one place each, with
``raise ... from exc`` so that the original stays attached.
"""

import errno as _errno


class NeighbpfError(Exception):
    """Base class of every error that neighbpf raises on purpose."""


class UsageError(NeighbpfError):
    """Bad input or a missing prerequisite that the user can fix.

    The message is one line that names the value and the fix. The command
    line prints it and exits with status 2.
    """


class DecodeError(NeighbpfError):
    """A netlink message or attribute is malformed.

    ``reason`` is a short stable key (for example ``"attr_overrun"``) that
    counters use.
    """

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class NetlinkError(NeighbpfError):
    """The kernel replied to a request with NLMSG_ERROR.

    ``errno`` is the positive errno value; ``extack`` is the kernel's
    extended-ack message, or an empty string when it sent none.
    """

    def __init__(self, errno, extack="", request=""):
        name = _errno.errorcode.get(errno, str(errno))
        text = f"{request}: " if request else ""
        text += f"netlink error {name} ({errno})"
        if extack:
            text += f": {extack}"
        super().__init__(text)
        self.errno = errno
        self.extack = extack


class DumpInterruptedError(NeighbpfError):
    """A dump kept carrying NLM_F_DUMP_INTR after every retry."""


class MapError(NeighbpfError):
    """A BPF map operation failed; ``errno`` names the kernel's reason."""

    def __init__(self, message, errno=0):
        super().__init__(message)
        self.errno = errno


class AbiMismatchError(UsageError):
    """A pinned map was created by a neighbpf with another map ABI."""
