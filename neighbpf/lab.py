"""The built-in lab: client, router and server namespaces with real traffic.

::

    client ns               router ns                        server ns
    nbl-c0 198.18.0.2/24 -- nbl-r0 198.18.0.1/24
                            nbl-r1 198.19.0.1/16 -- nbl-s0 198.19.1.1 ... (N addresses)/16

neighbpf runs on the router with the XDP forward stage on both router
interfaces. The client sends UDP to every server address: the first
packet to each misses the map, the kernel forwards it and resolves ARP,
the new neighbor arrives as an event, and later packets take the fast
path. The server records the TTL of what it receives, which shows that
the fast path decremented it.

Addresses come from 198.18.0.0/15, the range reserved for benchmark
networks (RFC 2544), and live only inside the lab's namespaces. The lab
removes everything it created, also on Ctrl-C, SIGTERM or an error, and
refuses to start when one of its names already exists.
"""

import contextlib
import ipaddress
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import threading
import time

from . import netns
from .errors import NeighbpfError, UsageError

log = logging.getLogger(__name__)

CLIENT_NS = "neighbpf-lab-client"
ROUTER_NS = "neighbpf-lab-router"
SERVER_NS = "neighbpf-lab-server"
NAMESPACES = (CLIENT_NS, ROUTER_NS, SERVER_NS)
PIN_DIR = "/sys/fs/bpf/neighbpf-lab"

CLIENT_ADDR = "198.18.0.2"
ROUTER_CLIENT_ADDR = "198.18.0.1"
ROUTER_SERVER_ADDR = "198.19.0.1"
SERVER_FIRST_ADDR = ipaddress.IPv4Address("198.19.1.1")
UDP_PORT = 40000
SEND_TTL = 64
MAX_ADDRESSES = 500  # stays well below the kernel's default gc_thresh3 of 1024

IP_RECVTTL = 12
IP_TTL = 2
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>
# Receive buffer requested for the server's socket, which the kernel
# doubles. UDP charges each datagram's skb truesize. On Linux 6.1 a frame
# that passed native XDP on a veth owns a whole page of 4352 bytes
# (veth_convert_skb_to_xdp_buff() in drivers/net/veth.c). So the buffer
# has room for about 1,900 datagrams while the reader thread lags.
RECEIVER_RCVBUF_BYTES = 4 * 1024 * 1024


def _ip(*args, netns_name=None):
    command = ["ip"] + (["-n", netns_name] if netns_name else []) + list(args)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise NeighbpfError(f"'{' '.join(command)}' failed: {result.stderr.strip()}")
    return result.stdout


def _ethtool(netns_name, *args):
    """Run ethtool inside a namespace; return False when it is missing or fails."""
    command = ["ip", "netns", "exec", netns_name, "ethtool"] + list(args)
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        return False
    return result.returncode == 0


def server_addresses(count):
    """Return the ``count`` addresses the lab's server owns, as strings."""
    return [str(SERVER_FIRST_ADDR + i) for i in range(count)]


class Lab:
    """The three namespaces and their links; ``create()`` then ``destroy()``."""

    def __init__(self, addresses):
        if not 1 <= addresses <= MAX_ADDRESSES:
            raise UsageError(f"invalid address count {addresses}; the lab supports 1 to {MAX_ADDRESSES}")
        self.addresses = server_addresses(addresses)
        self.created = []

    def check_free(self):
        """Raise UsageError if a lab name or pin directory already exists."""
        for name in NAMESPACES:
            if os.path.exists(os.path.join(netns.NETNS_RUN_DIR, name)):
                raise UsageError(f"lab namespace {name!r} already exists: another demo is running, or an "
                                 f"earlier one was killed; remove it with 'ip netns del {name}'")
        if os.path.exists(PIN_DIR):
            raise UsageError(f"lab pin directory {PIN_DIR} already exists: another demo is running, or an "
                             f"earlier one was killed; remove it with 'rm -r {PIN_DIR}'")

    def create(self):
        """Build the namespaces, links, addresses and routes."""
        self.check_free()
        for name in NAMESPACES:
            _ip("netns", "add", name)
            self.created.append(name)
            _ip("link", "set", "lo", "up", netns_name=name)
        _ip("link", "add", "nbl-c0", "netns", CLIENT_NS, "type", "veth", "peer", "nbl-r0", "netns", ROUTER_NS)
        _ip("link", "add", "nbl-r1", "netns", ROUTER_NS, "type", "veth", "peer", "nbl-s0", "netns", SERVER_NS)
        _ip("addr", "add", f"{CLIENT_ADDR}/24", "dev", "nbl-c0", netns_name=CLIENT_NS)
        _ip("addr", "add", f"{ROUTER_CLIENT_ADDR}/24", "dev", "nbl-r0", netns_name=ROUTER_NS)
        _ip("addr", "add", f"{ROUTER_SERVER_ADDR}/16", "dev", "nbl-r1", netns_name=ROUTER_NS)
        batch = "".join(f"address add {a}/16 dev nbl-s0\n" for a in self.addresses)
        subprocess.run(["ip", "-n", SERVER_NS, "-batch", "-"], input=batch, text=True, check=True)
        for name, dev in ((CLIENT_NS, "nbl-c0"), (ROUTER_NS, "nbl-r0"), (ROUTER_NS, "nbl-r1"), (SERVER_NS, "nbl-s0")):
            _ip("link", "set", dev, "up", netns_name=name)
        _ip("route", "add", "default", "via", ROUTER_CLIENT_ADDR, netns_name=CLIENT_NS)
        _ip("route", "add", "198.18.0.0/24", "via", ROUTER_SERVER_ADDR, netns_name=SERVER_NS)
        with netns.entered(ROUTER_NS), open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1\n")
        # A native-mode XDP_REDIRECT into a veth is delivered only when the
        # peer's receive side runs NAPI, which GRO (or an XDP program) turns
        # on. A veth also hands its peer packets with the checksum left to
        # "hardware" (CHECKSUM_PARTIAL). Native XDP turns them into raw
        # frames without that mark, so the server would drop them as bad UDP
        # checksums. With TX checksum offload off, the end hosts send
        # complete checksums, as frames on a real wire have.
        for name, dev in ((CLIENT_NS, "nbl-c0"), (SERVER_NS, "nbl-s0")):
            if not _ethtool(name, "-K", dev, "gro", "on", "tx", "off"):
                log.warning("could not set GRO on and TX checksum offload off on %s in %s; "
                            "native XDP redirects into it may be dropped (install ethtool)", dev, name)
        log.info("lab created: %s, %d server addresses", ", ".join(NAMESPACES), len(self.addresses))

    def destroy(self):
        """Remove every namespace this lab created (their links go with them)."""
        for name in reversed(self.created):
            try:
                _ip("netns", "del", name)
            except NeighbpfError as exc:
                log.error("removing lab namespace %s failed: %s", name, exc)
        self.created = []


def read_snmp_counter(netns_name, group, field):
    """Return one counter of /proc/net/snmp inside ``netns_name``."""
    with netns.entered(netns_name), open("/proc/thread-self/net/snmp") as f:
        lines = [line.split() for line in f if line.startswith(group + ":")]
    header, values = lines[0], lines[1]
    return int(values[header.index(field)])


class TtlReceiver:
    """A UDP socket in the server namespace that records received TTLs."""

    def __init__(self, netns_name, port=UDP_PORT):
        with netns.entered(netns_name):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # SO_RCVBUF is capped at net.core.rmem_max, 212992 bytes by default
        # (doubled, about 97 such datagrams). SO_RCVBUFFORCE is not capped
        # but needs CAP_NET_ADMIN, which the demo has because it runs as root.
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVER_RCVBUF_BYTES)
        except PermissionError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVER_RCVBUF_BYTES)
        self.sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        self.sock.bind(("0.0.0.0", port))
        self.ttls = {}
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lab-receiver", daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            readable, _, _ = select.select([self.sock], [], [], 0.1)
            if not readable:
                continue
            _data, ancillary, _flags, _addr = self.sock.recvmsg(2048, socket.CMSG_SPACE(4))
            for level, kind, value in ancillary:
                if level == socket.IPPROTO_IP and kind == IP_TTL:
                    ttl = struct.unpack("i", value[:4])[0]
                    self.ttls[ttl] = self.ttls.get(ttl, 0) + 1
            self.received += 1

    def wait_for(self, count, timeout_s):
        deadline = time.monotonic() + timeout_s
        while self.received < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.received

    def close(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()


def send_round(sock, addresses, port=UDP_PORT):
    for address in addresses:
        sock.sendto(b"neighbpf lab", (address, port))


def _wait_for_entries(maps, router_ifindex, addresses, timeout_s):
    wanted = {(router_ifindex, socket.inet_aton(a)) for a in addresses}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        present = wanted & maps.neigh.read_all().keys()
        if len(present) == len(wanted):
            return len(present)
        time.sleep(0.05)
    return len(wanted & maps.neigh.read_all().keys())


@contextlib.contextmanager
def _sigterm_as_interrupt():
    def interrupt(_signum, _frame):
        raise KeyboardInterrupt()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _remove_pin_dir():
    if not os.path.isdir(PIN_DIR):
        return
    for name in os.listdir(PIN_DIR):
        os.unlink(os.path.join(PIN_DIR, name))
    os.rmdir(PIN_DIR)


def run_demo(addresses=200, packets=5, xdp_mode="auto"):
    """Build the lab, run neighbpf on the router with real traffic, tear down.

    Returns a summary dict: ``entries``, ``xdp_hits``, ``xdp_misses``,
    ``xdp_mode``, ``map_matches_kernel``, ``kernel_forwarded``, ``ttls``,
    ``sent``, ``received`` and a readable ``text``.
    """
    from . import api
    from .daemon import Daemon

    if packets < 2:
        raise UsageError(f"invalid packet count {packets}; the demo needs at least 2 per address")
    api.require_root("neighbpf demo")
    lab = Lab(addresses)
    lab.check_free()
    daemon = None
    daemon_thread = None
    receiver = None
    sender = None
    with _sigterm_as_interrupt():
        try:
            lab.create()
            daemon = Daemon(netns_name=ROUTER_NS, iface_names=["nbl-r0", "nbl-r1"], pin_dir=PIN_DIR,
                            xdp_mode=xdp_mode, reconcile_interval_s=5.0)
            daemon.start()
            daemon_thread = threading.Thread(target=daemon.run, name="neighbpf-daemon", daemon=True)
            daemon_thread.start()
            router_ifindex = next(i for i, link in daemon.mirror.links.items() if link.name == "nbl-r1")

            receiver = TtlReceiver(SERVER_NS)
            with netns.entered(CLIENT_NS):
                sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sender.setsockopt(socket.IPPROTO_IP, IP_TTL, SEND_TTL)
            forwarded_before = read_snmp_counter(ROUTER_NS, "Ip", "ForwDatagrams")
            stats_before = daemon.maps.stats.read()

            started = time.monotonic()
            send_round(sender, lab.addresses)
            resolved = _wait_for_entries(daemon.maps, router_ifindex, lab.addresses, timeout_s=10.0)
            for _ in range(packets - 1):
                send_round(sender, lab.addresses)
                time.sleep(0.01)
            sent = packets * len(lab.addresses)
            received = receiver.wait_for(sent, timeout_s=5.0)
            elapsed = time.monotonic() - started

            stats_after = daemon.maps.stats.read()
            xdp = {k: stats_after[k] - stats_before.get(k, 0) for k in stats_after}
            kernel_forwarded = read_snmp_counter(ROUTER_NS, "Ip", "ForwDatagrams") - forwarded_before
            time.sleep(0.2)
            differences = api.verify(ROUTER_NS, PIN_DIR)
            modes = sorted(set(daemon.xdp_modes.values()))
            summary = {
                "entries": len(daemon.maps.neigh.read_all()),
                "xdp_hits": xdp.get("hits", 0),
                "xdp_misses": xdp.get("misses", 0),
                "xdp_passes": xdp.get("passes", 0),
                "xdp_errors": xdp.get("errors", 0),
                "xdp_mode": modes[0] if len(modes) == 1 else "/".join(modes),
                "map_matches_kernel": not differences,
                "kernel_forwarded": kernel_forwarded,
                "resolved": resolved,
                "sent": sent,
                "received": received,
                "ttls": dict(sorted(receiver.ttls.items())),
                "seconds": round(elapsed, 3),
            }
        finally:
            if sender is not None:
                sender.close()
            if receiver is not None:
                receiver.close()
            if daemon is not None:
                daemon.stop()
            if daemon_thread is not None:
                daemon_thread.join(timeout=5)
            lab.destroy()
            _remove_pin_dir()
    summary["text"] = _summary_text(summary, differences)
    return summary


def _summary_text(s, differences):
    ttl_text = ", ".join(f"TTL {ttl}: {count}" for ttl, count in s["ttls"].items()) or "none"
    lines = [
        "neighbpf lab: client -> router (neighbpf + XDP) -> server",
        f"  server addresses resolved and mirrored: {s['resolved']}",
        f"  map entries on the router:              {s['entries']}",
        f"  packets sent / received:                {s['sent']} / {s['received']} ({ttl_text}, sent with TTL {SEND_TTL})",
        f"  XDP ({s['xdp_mode']} mode): {s['xdp_hits']} fast-path hits, {s['xdp_misses']} misses, "
        f"{s['xdp_passes']} passed, {s['xdp_errors']} errors",
        f"  forwarded by the router's kernel:       {s['kernel_forwarded']}",
        f"  map matches the kernel's table:         {'yes' if s['map_matches_kernel'] else 'NO'}",
    ]
    lines += [f"    {d.describe()}" for d in differences]
    lines.append("  lab removed")
    return "\n".join(lines)
