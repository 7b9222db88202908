"""rtnetlink sockets: neighbor, link and address dumps, and the event feed.

``KernelSource`` owns two NETLINK_ROUTE sockets created inside the chosen
network namespace: an event socket that joins RTNLGRP_NEIGH,
RTNLGRP_LINK and RTNLGRP_IPV4_IFADDR, and a request socket for dumps.
The event socket is opened first, so that no change that happens while a
dump runs is lost: the caller applies the dump, then the queued events.

Only datagrams whose source port id is 0 (the kernel) are decoded. The
``nlmsg_pid`` inside a notification names the process that caused the
change, so the trust check uses the datagram's source address instead.
"""

import collections
import errno
import logging
import select
import socket
import time

from . import codec, netns
from .errors import DumpInterruptedError, NetlinkError, UsageError
from .ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_EXT_ACK = 11
SO_RCVBUFFORCE = 33

DEFAULT_EVENT_RCVBUF = 8 * 1024 * 1024
RECV_BUFSIZE = 1024 * 1024
DUMP_TIMEOUT_S = 10.0


class Overrun(Exception):
    """The event socket overflowed (ENOBUFS): events were lost."""


def _netlink_socket():
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    except PermissionError as exc:
        raise UsageError("opening a netlink socket is not permitted; run as root") from exc
    return sock


class KernelSource:
    """The kernel's neighbor table seen through rtnetlink, in one namespace.

    ``netns_name`` ``None`` means the caller's namespace. ``rcvbuf_bytes``
    sizes the event socket's receive buffer with SO_RCVBUFFORCE, falling
    back to SO_RCVBUF (capped by net.core.rmem_max) when not permitted.
    ``counters`` collects decode and transport counters by reason.
    """

    def __init__(self, netns_name=None, rcvbuf_bytes=DEFAULT_EVENT_RCVBUF, dump_retries=5):
        self.netns_name = netns_name
        self.dump_retries = dump_retries
        self.counters = collections.Counter()
        self._seq = int(time.time()) & 0x7FFFFFFF
        self._untrusted_log = RateLimitedLog(log, interval_s=10.0)
        with netns.entered(netns_name):
            self.events = _netlink_socket()
            self.requests = _netlink_socket()
        try:
            self._setup_event_socket(rcvbuf_bytes)
            self.requests.bind((0, 0))
            self.requests.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self.requests.settimeout(DUMP_TIMEOUT_S)
            self.request_portid = self.requests.getsockname()[0]
        except BaseException:
            self.close()
            raise

    def _setup_event_socket(self, rcvbuf_bytes):
        try:
            self.events.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf_bytes)
        except PermissionError:
            self.events.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf_bytes)
        self.rcvbuf_bytes = self.events.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.events.bind((0, 0))
        for group in (codec.RTNLGRP_NEIGH, codec.RTNLGRP_LINK, codec.RTNLGRP_IPV4_IFADDR):
            self.events.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        self.events.setblocking(False)
        self.event_portid = self.events.getsockname()[0]

    def close(self):
        """Close both sockets; safe to call twice."""
        for sock in (self.events, self.requests):
            sock.close()

    def fileno(self):
        """Return the event socket's descriptor, for select and poll."""
        return self.events.fileno()

    # Dumps.

    def _next_seq(self):
        self._seq = (self._seq + 1) & 0x7FFFFFFF
        return self._seq

    def _dump_once(self, request, seq, kind):
        """Send one dump request and read the reply up to NLMSG_DONE.

        Returns ``(messages, interrupted)``. Always reads to the end, so
        the socket is never left in the middle of a dump.
        """
        self.requests.send(request)
        messages = []
        interrupted = False
        while True:
            try:
                data, (sender, _groups) = self.requests.recvfrom(RECV_BUFSIZE)
            except socket.timeout as exc:
                raise NetlinkError(errno.ETIMEDOUT, "", f"{kind} dump timed out after {DUMP_TIMEOUT_S:.0f} s with no reply") from exc
            if sender != 0:
                self._drop_untrusted(sender)
                continue
            for msg in codec.iter_messages(data, self.counters):
                if msg.seq != seq or msg.portid != self.request_portid:
                    self.counters["dump_foreign_seq"] += 1
                    continue
                if msg.nlmsg_flags & codec.NLM_F_DUMP_INTR:
                    interrupted = True
                if isinstance(msg, codec.ErrorMessage):
                    if msg.error:
                        raise NetlinkError(msg.error, msg.extack, f"{kind} dump")
                    continue
                if isinstance(msg, codec.DoneMessage):
                    if msg.error:
                        raise NetlinkError(msg.error, msg.extack, f"{kind} dump")
                    return messages, interrupted
                messages.append(msg)

    def _dump(self, make_request, kind):
        delay_s = 0.01
        for attempt in range(self.dump_retries + 1):
            seq = self._next_seq()
            messages, interrupted = self._dump_once(make_request(seq), seq, kind)
            if not interrupted:
                return messages
            self.counters["dump_retries"] += 1
            log.warning("%s dump interrupted by concurrent changes (NLM_F_DUMP_INTR), attempt %d of %d",
                        kind, attempt + 1, self.dump_retries + 1)
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 1.0)
        raise DumpInterruptedError(
            f"{kind} dump was interrupted {self.dump_retries + 1} times in a row; the table keeps changing too fast")

    def dump_neighbors(self, ifindex=0):
        """Return every AF_INET NeighMessage of the namespace.

        With ``ifindex`` the kernel filters the dump to that interface
        (NDA_IFINDEX). Retries the whole dump on NLM_F_DUMP_INTR.
        """
        return self._dump(lambda seq: codec.encode_neigh_dump_request(seq, ifindex), "neighbor")

    def dump_links(self):
        """Return a LinkMessage for every interface of the namespace."""
        return self._dump(codec.encode_link_dump_request, "link")

    def dump_addresses(self):
        """Return an AddrMessage for every IPv4 address of the namespace."""
        return self._dump(codec.encode_addr_dump_request, "address")

    # Events.

    def _drop_untrusted(self, sender):
        self.counters["untrusted_sender"] += 1
        self._untrusted_log.warning(
            "dropped a netlink datagram from port id %d; only the kernel (port id 0) is trusted", sender)

    def read_events(self, max_datagrams=256):
        """Return the decoded messages queued on the event socket.

        Reads without blocking, at most ``max_datagrams`` datagrams.
        Raises Overrun when the kernel reports ENOBUFS: the caller must
        drain (``drain_events``), dump and sweep.
        """
        messages = []
        for _ in range(max_datagrams):
            try:
                data, (sender, _groups) = self.events.recvfrom(RECV_BUFSIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.counters["overruns"] += 1
                    raise Overrun() from exc
                raise
            if sender != 0:
                self._drop_untrusted(sender)
                continue
            messages.extend(codec.iter_messages(data, self.counters))
        return messages

    def drain_events(self, max_datagrams=65536):
        """Discard what is queued on the event socket; return the count.

        Stops after ``max_datagrams``, so that a flood of events cannot
        keep it reading forever. The dump that follows a drain makes any
        event left in the queue harmless: events are applied in order.
        """
        drained = 0
        while drained < max_datagrams:
            try:
                self.events.recv(RECV_BUFSIZE)
                drained += 1
            except BlockingIOError:
                return drained
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
        return drained

    def wait(self, timeout_s):
        """Block until events are queued or ``timeout_s`` passes."""
        readable, _, _ = select.select([self.events], [], [], max(timeout_s, 0))
        return bool(readable)

