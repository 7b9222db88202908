"""Compile the built-in XDP forward stage with bcc and attach it to interfaces.

Usage, with the maps already pinned by ``PinnedMaps.open(create=True)``::

    stage = ForwardStage("/sys/fs/bpf/neighbpf")
    with netns.entered("router"):
        mode = stage.attach("veth0")      # "native" or "generic"
    ...
    with netns.entered("router"):
        stage.detach("veth0")
    stage.close()

Native mode and veth: an XDP_REDIRECT into a veth in native (driver)
mode hands the frame to veth_xdp_xmit(), which drops it unless the
veth's peer runs NAPI. The peer runs NAPI only while it has an XDP
program attached or GRO enabled (``ethtool -K <peer> gro on``, Linux
5.13 and later). Generic (SKB) mode delivers the frames without either,
at a lower rate. The drops are not visible to the program, only to the
xdp:xdp_redirect_err tracepoint and the peer's rx_drops statistics.

Checksum offload and veth: a frame that a local socket sent through a
veth with tx checksum offload carries an incomplete L4 checksum
(CHECKSUM_PARTIAL). Native XDP_REDIRECT turns it into an xdp_frame,
which has no room for that state, so the receiver counts a checksum error
(Udp InCsumErrors) and drops it. Frames from a real NIC always carry a
complete checksum. In a veth lab, turn offload off on the sender
(``ethtool -K <sender> tx off``) or use generic mode, which keeps the skb.
Both facts were measured on Linux 6.18 with tests/integration/test_xdp.py.
"""

import contextlib
import ctypes
import errno
import logging
import os
import re
import socket
import tempfile

from . import abi, bccenv
from .errors import UsageError

__all__ = ["ForwardStage", "program_uses_map", "XDP_FLAGS_UPDATE_IF_NOEXIST", "XDP_FLAGS_SKB_MODE", "XDP_FLAGS_DRV_MODE"]

log = logging.getLogger(__name__)

# From <linux/if_link.h>.
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2

MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
MODES = ("auto", "native", "generic")

FORWARD_SOURCE = os.path.join(abi.BPF_SOURCE_DIR, "forward.c")
FORWARD_FUNCTION = "neighbpf_forward"
_UNSAFE_PIN_DIR = re.compile(r'["\\\n\r]')


@contextlib.contextmanager
def _captured_stderr():
    """Collect what C code writes to fd 2 (clang diagnostics, the verifier log).

    Yields a list that holds the captured text after the block ends.
    """
    captured = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved_fd = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            sink.seek(0)
            captured.append(sink.read().decode(errors="replace"))


def _first_error_line(output):
    """Return the first compiler or verifier error line of ``output``, or its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if "error:" in line:
            return line
    return lines[-1] if lines else "no output"


def _ifindex(ifname):
    """Return the ifindex of ``ifname`` in the calling thread's namespace, or None."""
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None


class _BpfProgInfo(ctypes.Structure):
    """Leading fields of ``struct bpf_prog_info`` (include/uapi/linux/bpf.h)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
    ]


def program_uses_map(ifname, map_fd):
    """Return True when the XDP program on ``ifname`` reads the map behind ``map_fd``.

    ``ifname`` is looked up in the calling thread's namespace. A daemon
    uses this to recognise the forward stage that an earlier daemon of the
    same pin directory left attached with --keep-xdp. For a program of any
    other origin, or no program, it returns False. Uses libbpf.so.1, which bcc links
    (bpf_xdp_query_id needs libbpf 0.8 or later).
    """
    libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
    try:
        ifindex = socket.if_nametoindex(ifname)
    except OSError:
        return False
    prog_id = ctypes.c_uint32()
    if libbpf.bpf_xdp_query_id(ifindex, 0, ctypes.byref(prog_id)) != 0 or not prog_id.value:
        return False
    map_info = (ctypes.c_uint32 * 2)()  # struct bpf_map_info starts with type, id
    size = ctypes.c_uint32(ctypes.sizeof(map_info))
    if libbpf.bpf_obj_get_info_by_fd(map_fd, map_info, ctypes.byref(size)) != 0:
        return False
    prog_fd = libbpf.bpf_prog_get_fd_by_id(prog_id.value)
    if prog_fd < 0:
        return False
    try:
        map_ids = (ctypes.c_uint32 * 64)()
        info = _BpfProgInfo(nr_map_ids=len(map_ids), map_ids=ctypes.addressof(map_ids))
        size = ctypes.c_uint32(ctypes.sizeof(info))
        if libbpf.bpf_obj_get_info_by_fd(prog_fd, ctypes.byref(info), ctypes.byref(size)) != 0:
            return False
        return map_info[1] in map_ids[:min(info.nr_map_ids, len(map_ids))]
    finally:
        os.close(prog_fd)


class ForwardStage:
    """The forward stage compiled against one pin directory.

    ``attached`` maps each interface name that this object attached to the
    mode in use (``"native"`` or ``"generic"``).
    """

    def __init__(self, pin_dir=abi.PIN_DIR_DEFAULT):
        """Compile ``bpf/forward.c`` against the maps pinned in ``pin_dir``.

        The pins must exist (``PinnedMaps.open(create=True)`` makes them):
        bcc would otherwise create and pin maps of its own there. Raises
        UsageError when pins are missing or when compiling or loading
        fails, with the first error line of the compiler or verifier.
        """
        from bcc import BPF  # imported late: bcc loads LLVM, which takes a while

        self.pin_dir = os.path.abspath(pin_dir)
        self.attached = {}
        if _UNSAFE_PIN_DIR.search(self.pin_dir):
            raise UsageError(f"invalid pin directory {pin_dir!r}: quotes, backslashes and newlines are not allowed")
        missing = [name for name in abi.PIN_NAMES if not os.path.exists(os.path.join(self.pin_dir, name))]
        if missing:
            raise UsageError(f"pins {', '.join(missing)} missing in {self.pin_dir}; "
                             "start 'neighbpf run' or 'neighbpf sync --once' first")

        bccenv.ensure_kernel_headers()
        cflags = [f"-I{abi.BPF_SOURCE_DIR}", f'-DNEIGHBPF_PIN_DIR="{self.pin_dir}"']
        with _captured_stderr() as output:
            try:
                self._bpf = BPF(src_file=FORWARD_SOURCE.encode(), cflags=cflags)
                self._function = self._bpf.load_func(FORWARD_FUNCTION.encode(), BPF.XDP)
            except Exception as exc:  # bcc raises plain Exception for compile and load errors
                failure = exc
            else:
                failure = None
        if failure is not None:
            log.debug("bcc output for %s:\n%s", FORWARD_SOURCE, output[0])
            raise UsageError(f"compiling {FORWARD_SOURCE} failed: {_first_error_line(output[0] or str(failure))}") \
                from failure
        if output[0].strip():
            log.debug("bcc output for %s:\n%s", FORWARD_SOURCE, output[0])

    def attach(self, ifname, mode="auto", replace=False):
        """Attach the stage to ``ifname`` in the calling thread's network namespace.

        ``mode`` is ``"native"`` (driver mode), ``"generic"`` (SKB mode) or
        ``"auto"``, which tries native first and falls back to generic.
        Returns the mode in use. An interface that already has an XDP
        program is not taken over unless ``replace`` is true. Then the
        kernel swaps the programs in one step, provided the new one goes in
        the mode of the old one. Raises UsageError for a missing interface,
        an unknown mode, an interface with another XDP program, or when the
        kernel rejects the attach.
        """
        if mode not in MODES:
            raise UsageError(f"invalid XDP mode {mode!r}; use one of {', '.join(MODES)}")
        if _ifindex(ifname) is None:
            raise UsageError(f"interface {ifname!r} not found in the current network namespace; "
                             "check 'ip link' or --netns")

        tried = ["native", "generic"] if mode == "auto" else [mode]
        errors = []
        for candidate in tried:
            flags = MODE_FLAGS[candidate] | (0 if replace else XDP_FLAGS_UPDATE_IF_NOEXIST)
            err = self._set_link_xdp(ifname, self._function.fd, flags)
            if err == 0:
                self.attached[ifname] = candidate
                log.info("forward stage attached to %s in %s mode", ifname, candidate)
                return candidate
            # With replace, EEXIST means the old program runs in the other
            # mode (the kernel allows one mode at a time): try the next one.
            if err in (errno.EBUSY, errno.EEXIST) and not replace:
                raise UsageError(f"interface {ifname} already has an XDP program; remove it with "
                                 f"'ip link set dev {ifname} xdp off' or leave {ifname} out")
            errors.append(f"{candidate}: {errno.errorcode.get(err, err)}")
            log.info("attaching to %s in %s mode failed with %s", ifname, candidate, errno.errorcode.get(err, err))
        raise UsageError(f"attaching the forward stage to {ifname} failed ({', '.join(errors)}); "
                         "try --xdp-mode generic or --no-xdp")

    def detach(self, ifname):
        """Remove the XDP program from ``ifname`` in the calling thread's namespace.

        A missing interface is not an error. An interface that this object
        did not attach is cleared in both modes.
        """
        mode = self.attached.pop(ifname, None)
        if _ifindex(ifname) is None:
            return
        modes = [mode] if mode else ["native", "generic"]
        for candidate in modes:
            err = self._set_link_xdp(ifname, -1, MODE_FLAGS[candidate])
            if err not in (0, errno.ENODEV):
                log.warning("detaching from %s (%s mode) failed with %s", ifname, candidate,
                            errno.errorcode.get(err, err))

    def close(self):
        """Release the compiled program; attachments stay until detach()."""
        if self.attached:
            log.warning("forward stage closed while still attached to %s", ", ".join(sorted(self.attached)))
        self._bpf.cleanup()

    @staticmethod
    def _set_link_xdp(ifname, prog_fd, flags):
        """Attach ``prog_fd`` (or detach with -1) through bcc; return 0 or an errno."""
        from bcc.libbcc import lib

        with _captured_stderr() as output:
            ctypes.set_errno(0)
            result = lib.bpf_attach_xdp(ifname.encode(), prog_fd, flags)
            err = ctypes.get_errno()
        if result == 0:
            return 0
        # bcc's bpf_attach_xdp() returns -1 and prints libbpf's message; the
        # errno is the one libbpf left, or -result for newer bcc versions.
        log.debug("bpf_attach_xdp(%s, flags %#x): %s", ifname, flags, output[0].strip())
        return err or -result or errno.EINVAL
