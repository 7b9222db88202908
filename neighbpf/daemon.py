"""The long-running mirror: dump, follow events, reconcile, serve XDP.

``Daemon.start()`` opens the pinned maps (reusing an existing pin), joins
the event groups, runs the first dump with its sweep and attaches the
XDP forward stage. ``Daemon.run()`` follows events until a stop is
requested. ``Daemon.stop()`` detaches what it attached, unless ``keep_xdp``
keeps the fast path in place, and always leaves the map pinned.
"""

import fcntl
import json
import logging
import os
import threading
import time

from . import netns
from .bpfmap import PinnedMaps
from .errors import NeighbpfError, UsageError
from .kernel import DEFAULT_EVENT_RCVBUF, KernelSource
from .mirror import Mirror

log = logging.getLogger(__name__)

DEFAULT_PIN_DIR = "/sys/fs/bpf/neighbpf"
STATS_DIR = "/run/neighbpf/stats"
LOCK_DIR = "/run/neighbpf/locks"
STATS_INTERVAL_S = 1.0

# Counters that ``neighbpf stats`` always shows, with 0 until they move.
# Others (ignored messages by reason, malformed ones) appear once counted.
REPORTED_COUNTERS = (
    "event_newneigh", "event_delneigh", "event_newlink", "event_dellink", "event_newaddr", "event_deladdr",
    "netlink_overruns", "resyncs", "link_resyncs", "netlink_dump_retries", "netlink_untrusted_sender",
    "map_updates", "map_deletes", "map_full", "map_errors", "drift_repaired", "loop_errors",
)


class PinDirLock:
    """An exclusive lock that one writer of a pin directory holds.

    Two processes that mirror into the same maps, possibly from different
    namespaces, would overwrite each other's entries and sweep each
    other's keys. ``acquire()`` raises UsageError naming the holder's pid
    when another process holds the lock. The kernel releases the flock(2)
    when the holder exits, also after SIGKILL. ``release()`` removes the
    lock file, so only a killed holder leaves one behind.
    """

    def __init__(self, pin_dir):
        name = os.path.abspath(pin_dir).strip("/").replace("/", "_")
        self.pin_dir = pin_dir
        self.path = os.path.join(LOCK_DIR, name + ".lock")
        self._fd = None

    def acquire(self):
        os.makedirs(LOCK_DIR, mode=0o755, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise UsageError(f"another neighbpf process (pid {holder}) already writes the maps at "
                                 f"{self.pin_dir}; stop it first or choose another --pin-dir") from None
            # The previous holder may have removed the file between our open
            # and flock. A lock on that removed inode excludes no other writer.
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    @property
    def held(self):
        return self._fd is not None

    def release(self):
        if self._fd is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None


def stats_path(pin_dir):
    """Return the file where the daemon serving ``pin_dir`` writes counters."""
    name = os.path.abspath(pin_dir).strip("/").replace("/", "_")
    return os.path.join(STATS_DIR, name + ".json")


class Daemon:
    """Mirror one namespace into the maps pinned at ``pin_dir``.

    ``iface_names`` limits the mirror and names the interfaces that get
    the XDP forward stage. Without it every interface is mirrored and no
    XDP program is attached, because XDP goes only on interfaces that the
    operator named.
    """

    def __init__(self, netns_name=None, iface_names=None, pin_dir=DEFAULT_PIN_DIR, xdp=True,
                 xdp_mode="auto", max_entries=None, rcvbuf_bytes=DEFAULT_EVENT_RCVBUF,
                 reconcile_interval_s=30.0, keep_xdp=False):
        self.netns_name = netns_name
        self.iface_names = list(iface_names) if iface_names else None
        self.pin_dir = pin_dir
        self.xdp = xdp
        self.xdp_mode = xdp_mode
        self.max_entries = max_entries
        self.rcvbuf_bytes = rcvbuf_bytes
        self.reconcile_interval_s = reconcile_interval_s
        self.keep_xdp = keep_xdp
        self.maps = None
        self.mirror = None
        self.stage = None
        self.xdp_modes = {}
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self._stopped = False
        self._lock = PinDirLock(pin_dir)
        self._stats_path = stats_path(pin_dir)

    def start(self):
        """Open maps and sockets, run the first dump, attach XDP."""
        log.info("starting: netns=%s interfaces=%s pin_dir=%s xdp=%s",
                 self.netns_name or "(own)", ",".join(self.iface_names or ["(all)"]),
                 self.pin_dir, self.xdp_mode if self.xdp and self.iface_names else "off")
        if self.netns_name is not None:
            netns.netns_path(self.netns_name)
        try:
            self._lock.acquire()
            self.maps = PinnedMaps.open(self.pin_dir, create=True, max_entries=self.max_entries)
            source = KernelSource(self.netns_name, rcvbuf_bytes=self.rcvbuf_bytes)
            self.mirror = Mirror(self.maps, source, iface_names=self.iface_names)
            self.mirror.full_resync("start")
            missing = self.mirror.missing_ifaces()
            if missing:
                where = f"namespace {self.netns_name!r}" if self.netns_name else "this namespace"
                raise UsageError(f"interface {missing[0]!r} not found in {where}; check 'ip link show'")
            if self.xdp and self.iface_names:
                self._attach_xdp()
            elif self.xdp:
                log.info("XDP forward stage not attached: name the interfaces with --iface")
        except BaseException:
            self.stop()
            raise
        log.info("started: %d neighbors mirrored, event socket buffer %d bytes",
                 len(self.mirror.table), self.mirror.source.rcvbuf_bytes)
        self.ready.set()

    def _check_forwarding(self):
        """Raise UsageError unless the kernel forwards IPv4 on every named interface.

        The forward stage must not forward what the kernel itself would
        not: a router with forwarding off would otherwise start forwarding
        on the fast path.
        """
        with netns.entered(self.netns_name):
            for name in self.iface_names:
                try:
                    with open(f"/proc/sys/net/ipv4/conf/{name}/forwarding") as f:
                        enabled = f.read().strip() == "1"
                except FileNotFoundError:
                    continue
                if not enabled:
                    raise UsageError(
                        f"IPv4 forwarding is off on {name} (net.ipv4.conf.{name}.forwarding=0); enable it "
                        "with 'sysctl -w net.ipv4.ip_forward=1' or run with --no-xdp")

    def _attach_xdp(self):
        from .xdp import ForwardStage, program_uses_map

        self._check_forwarding()
        self.stage = ForwardStage(self.pin_dir)
        with netns.entered(self.netns_name):
            for name in self.iface_names:
                # An earlier daemon of this pin directory may have left its
                # stage attached with --keep-xdp: replace it in one step, so
                # that the fast path never stops.
                replace = program_uses_map(name, self.maps.neigh.fd)
                if replace:
                    log.info("replacing the forward stage left attached to %s", name)
                self.xdp_modes[name] = self.stage.attach(name, self.xdp_mode, replace=replace)
                log.info("XDP forward stage attached to %s in %s mode", name, self.xdp_modes[name])

    def run(self):
        """Follow events until ``stop_event`` is set."""
        next_reconcile = time.monotonic() + self.reconcile_interval_s
        next_stats = 0.0
        while not self.stop_event.is_set():
            now = time.monotonic()
            timeout_s = min(next_reconcile - now, 0.2)
            try:
                if self.mirror.source.wait(timeout_s):
                    self.mirror.poll()
                now = time.monotonic()
                if now >= next_reconcile:
                    self.mirror.reconcile()
                    next_reconcile = now + self.reconcile_interval_s
            except NeighbpfError as exc:
                self.mirror.counters["loop_errors"] += 1
                log.error("event loop error, resyncing: %s", exc)
                self._resync_after_error()
            if now >= next_stats:
                self.write_stats()
                next_stats = now + STATS_INTERVAL_S

    def _resync_after_error(self):
        try:
            self.mirror.full_resync("error")
        except NeighbpfError as exc:
            log.error("resync after error failed, retrying in 1 s: %s", exc)
            self.stop_event.wait(1.0)

    def stats(self):
        """Return the daemon's counters as a JSON-ready dict."""
        counters = dict.fromkeys(REPORTED_COUNTERS, 0)
        if self.mirror:
            counters.update(self.mirror.counters)
            counters.update({f"table_{k}": v for k, v in self.mirror.table.counters.items()})
            counters.update({f"netlink_{k}": v for k, v in self.mirror.source.counters.items()})
        return {
            "pid": os.getpid(),
            "netns": self.netns_name,
            "pin_dir": self.pin_dir,
            "entries": len(self.mirror.table) if self.mirror else 0,
            "xdp_modes": self.xdp_modes,
            "updated": time.time(),
            "counters": counters,
        }

    def write_stats(self):
        """Write ``stats()`` atomically where ``neighbpf stats`` reads it."""
        try:
            os.makedirs(STATS_DIR, mode=0o755, exist_ok=True)
            tmp = self._stats_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.stats(), f)
            os.replace(tmp, self._stats_path)
        except OSError as exc:
            log.warning("writing counters to %s failed: %s", self._stats_path, exc)

    def stop(self):
        """Detach XDP (unless keep_xdp), close sockets and maps; idempotent."""
        self.stop_event.set()
        if self._stopped:
            return
        self._stopped = True
        if self.stage is not None:
            if self.keep_xdp:
                if self.stage.attached:
                    log.info("leaving the XDP forward stage attached to %s", ",".join(self.stage.attached))
            else:
                with netns.entered(self.netns_name):
                    for name in list(self.stage.attached):
                        try:
                            self.stage.detach(name)
                        except NeighbpfError as exc:
                            log.error("detaching XDP from %s failed: %s", name, exc)
                self.stage.close()
            self.stage = None
        if self.mirror is not None:
            self.mirror.close()
        if self.maps is not None:
            self.maps.close()
        # A daemon refused for a held lock must not remove the holder's counters.
        if self._lock.held:
            try:
                os.unlink(self._stats_path)
            except FileNotFoundError:
                pass
        self._lock.release()
        log.info("stopped")
