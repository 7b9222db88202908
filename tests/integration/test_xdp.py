"""The XDP forward stage with real packets through three namespaces.

client (c0 198.18.1.2/24) -- (r0 198.18.1.1/24) router (r1 198.18.2.1/24)
-- (s0 198.18.2.2/24, 198.18.2.3/24) server

Only the router forwards (ip_forward=1 in its namespace). Its neighbors
are learned by real ARP, and the test fills neigh4, routes4 and ifaces
from the router's ``ip -j`` output, except for 198.18.2.3, which stays
out of neigh4 so that packets to it are misses. The server reads the TTL
of each datagram with IP_RECVTTL.
"""

import ipaddress
import select
import socket
import struct

import pytest

from neighbpf import netns, xdp
from neighbpf.bpfmap import PinnedMaps
from neighbpf.errors import UsageError
from neighbpf.xdp import ForwardStage
from nslab import (ROUTED_CLIENT_ADDR, ROUTED_SERVER_ADDR, call_in_netns, ip_json, netns_lab,  # noqa: F401 (fixtures)
                   pin_dir, read_snmp, run)

pytestmark = pytest.mark.integration

CLIENT_ADDR = ROUTED_CLIENT_ADDR
SERVER_ADDR = ROUTED_SERVER_ADDR
SERVER_ADDR_MISS = "198.18.2.3"
PORT = 40000
SEND_TTL = 64
PACKETS = 50

NUD_BY_NAME = {"INCOMPLETE": 0x01, "REACHABLE": 0x02, "STALE": 0x04, "DELAY": 0x08, "PROBE": 0x10,
               "FAILED": 0x20, "NOARP": 0x40, "PERMANENT": 0x80}
# <linux/in.h>: IP_RECVTTL enables an IP_TTL control message on receive.
IP_RECVTTL = 12
# <asm-generic/socket.h>: SO_RCVBUFFORCE sets the receive buffer past
# net.core.rmem_max (CAP_NET_ADMIN only).
SO_RCVBUFFORCE = 33
# The receiver needs room for all PACKETS datagrams, because each test sends
# them all before it reads one. UDP charges a datagram's skb truesize, not
# its length, to the buffer. On Linux 6.1, native XDP on the router's veth
# copies every frame into a page of its own (veth_convert_skb_to_xdp_buff()
# in drivers/net/veth.c), so each datagram costs 4352 bytes at the server,
# redirected or passed. The default buffer (net.core.rmem_default, 212992)
# then has room for 49 of 50, and UDP drops the last one as Udp RcvbufErrors.
# Linux 6.18 charges about 940 bytes for the same datagram.
RECEIVE_BUFFER_BYTES = 1 << 20


def mac_bytes(text):
    return bytes.fromhex(text.replace(":", ""))


@pytest.fixture
def topology(netns_lab):
    """Build client -- router -- server and return their namespace names."""
    client, router, server = netns_lab.add_routed(server_addrs=(SERVER_ADDR, SERVER_ADDR_MISS))

    # Real ARP: the router resolves both hosts, the hosts resolve the router.
    for address in (CLIENT_ADDR, SERVER_ADDR):
        run("ping", "-c", "1", "-W", "2", address, netns_name=router)
    return {"client": client, "router": router, "server": server, "lab": netns_lab}


def fill_maps(maps, router):
    """Write the router's neighbors, connected prefixes and MACs into the maps.

    Returns the number of neighbor entries written.
    """
    links = {link["ifname"]: link for link in ip_json("link", "show", netns_name=router)}
    ifaces = {link["ifindex"]: mac_bytes(link["address"]) for name, link in links.items() if name != "lo"}
    maps.ifaces.replace_all(ifaces)

    prefixes = {}
    for link in ip_json("addr", "show", netns_name=router):
        for address in link.get("addr_info", []):
            if address["family"] != "inet" or link["ifname"] == "lo":
                continue
            network = ipaddress.ip_interface(f"{address['local']}/{address['prefixlen']}").network
            prefixes[(network.network_address.packed, network.prefixlen)] = link["ifindex"]
    maps.routes.replace_all(prefixes)

    items = []
    for entry in ip_json("neigh", "show", netns_name=router):
        if "lladdr" not in entry or ":" in entry["dst"] or entry["dst"] == SERVER_ADDR_MISS:
            continue
        nud_state = 0
        for state in entry.get("state", []):
            nud_state |= NUD_BY_NAME.get(state, 0)
        ifindex = links[entry["dev"]]["ifindex"]
        items.append(((ifindex, socket.inet_aton(entry["dst"])), (mac_bytes(entry["lladdr"]), nud_state, 0)))
    result = maps.neigh.update_batch(items)
    assert result.failed == []
    return len(items)


def open_receiver(server):
    def create():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER_BYTES)
        sock.bind(("0.0.0.0", PORT))
        return sock
    sock = call_in_netns(server, create)
    # The kernel doubles the value set, for its own bookkeeping.
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= RECEIVE_BUFFER_BYTES
    return sock


def send_datagrams(client, destination, count, ttl=SEND_TTL, ip_options=b""):
    def create():
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock = call_in_netns(client, create)
    with sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        if ip_options:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, ip_options)
        for sequence in range(count):
            sock.sendto(struct.pack("!I", sequence), (destination, PORT))


def receive_ttls(sock, count, timeout_s=2.0):
    """Return the IP TTLs of up to ``count`` datagrams, waiting at most ``timeout_s`` for each."""
    ttls = []
    while len(ttls) < count:
        readable, _, _ = select.select([sock], [], [], timeout_s)
        if not readable:
            break
        _, ancillary, _, _ = sock.recvmsg(64, socket.CMSG_SPACE(4))
        for level, kind, data in ancillary:
            if level == socket.IPPROTO_IP and kind == socket.IP_TTL:
                ttls.append(struct.unpack("i", data[:4])[0])
    return ttls


def counters(maps, router):
    return maps.stats.read(), read_snmp(router)["ForwDatagrams"]


@pytest.fixture(params=["native", "generic"])
def forwarding(request, topology, pin_dir):
    """Maps filled from the router, the stage attached to r0 and r1 in the requested mode."""
    mode = request.param
    client, router, server = topology["client"], topology["router"], topology["server"]
    if mode == "native":
        # veth_xdp_xmit() drops redirected frames unless the receiving peer
        # runs NAPI, which GRO (or an XDP program) turns on. The client
        # computes its own UDP checksums ("tx off"): a frame with offloaded
        # (CHECKSUM_PARTIAL) checksum loses that state in the xdp_frame and
        # arrives with a bad checksum, which a real NIC never delivers.
        topology["lab"].ethtool(client, "-K", "c0", "gro", "on", "tx", "off")
        topology["lab"].ethtool(server, "-K", "s0", "gro", "on")

    maps = PinnedMaps.open(pin_dir, create=True, max_entries=256)
    stage = None
    try:
        fill_maps(maps, router)
        stage = ForwardStage(pin_dir)
        with netns.entered(router):
            for ifname in ("r0", "r1"):
                assert stage.attach(ifname, mode) == mode
        receiver = open_receiver(server)
        try:
            yield {**topology, "maps": maps, "mode": mode, "receiver": receiver}
        finally:
            receiver.close()
    finally:
        if stage is not None:
            with netns.entered(router):
                for ifname in ("r0", "r1"):
                    stage.detach(ifname)
            stage.close()
        maps.close()


def test_forward_hit_decrements_ttl(forwarding):
    maps, router = forwarding["maps"], forwarding["router"]
    stats_before, forwarded_before = counters(maps, router)

    send_datagrams(forwarding["client"], SERVER_ADDR, PACKETS)
    ttls = receive_ttls(forwarding["receiver"], PACKETS)

    stats_after, forwarded_after = counters(maps, router)
    hits = stats_after["hits"] - stats_before["hits"]
    print(f"XDP mode {forwarding['mode']}: {hits} hits")
    assert len(ttls) == PACKETS
    assert set(ttls) == {SEND_TTL - 1}
    assert hits == PACKETS
    assert stats_after["errors"] == stats_before["errors"]
    # The kernel's forwarding path did not see the fast-path packets.
    assert forwarded_after - forwarded_before == 0


def test_forward_miss_passes_to_kernel(forwarding):
    maps, router = forwarding["maps"], forwarding["router"]
    stats_before, forwarded_before = counters(maps, router)

    send_datagrams(forwarding["client"], SERVER_ADDR_MISS, PACKETS)
    ttls = receive_ttls(forwarding["receiver"], PACKETS)

    stats_after, forwarded_after = counters(maps, router)
    assert len(ttls) == PACKETS
    assert set(ttls) == {SEND_TTL - 1}
    assert stats_after["misses"] - stats_before["misses"] == PACKETS
    assert stats_after["hits"] == stats_before["hits"]
    assert forwarded_after - forwarded_before == PACKETS


def test_forward_invalid_state_is_miss(forwarding):
    maps, router = forwarding["maps"], forwarding["router"]
    links = {link["ifname"]: link for link in ip_json("link", "show", netns_name=router)}
    # An INCOMPLETE entry carries no usable MAC: the program must not use it.
    key = (links["r1"]["ifindex"], socket.inet_aton(SERVER_ADDR_MISS))
    assert maps.neigh.update_batch([(key, (b"\x02\x00\x00\x00\x00\x99", NUD_BY_NAME["INCOMPLETE"], 0))]).failed == []
    stats_before, forwarded_before = counters(maps, router)

    send_datagrams(forwarding["client"], SERVER_ADDR_MISS, PACKETS)
    ttls = receive_ttls(forwarding["receiver"], PACKETS)

    stats_after, forwarded_after = counters(maps, router)
    assert len(ttls) == PACKETS
    assert stats_after["misses"] - stats_before["misses"] == PACKETS
    assert stats_after["hits"] == stats_before["hits"]
    assert forwarded_after - forwarded_before == PACKETS


def test_forward_ip_options_pass(forwarding):
    maps, router = forwarding["maps"], forwarding["router"]
    stats_before, forwarded_before = counters(maps, router)

    # NOP, NOP, NOP, end of list: IHL 6, which the program leaves to the kernel.
    send_datagrams(forwarding["client"], SERVER_ADDR, PACKETS, ip_options=b"\x01\x01\x01\x00")
    ttls = receive_ttls(forwarding["receiver"], PACKETS)

    stats_after, forwarded_after = counters(maps, router)
    assert len(ttls) == PACKETS
    assert set(ttls) == {SEND_TTL - 1}
    assert stats_after["passes"] - stats_before["passes"] >= PACKETS
    assert stats_after["hits"] == stats_before["hits"]
    assert forwarded_after - forwarded_before == PACKETS


def test_forward_ttl_one_passes(forwarding):
    maps, router = forwarding["maps"], forwarding["router"]
    stats_before, forwarded_before = counters(maps, router)
    time_exceeded_before = read_snmp(router, "Icmp")["OutTimeExcds"]

    send_datagrams(forwarding["client"], SERVER_ADDR, PACKETS, ttl=1)
    ttls = receive_ttls(forwarding["receiver"], PACKETS, timeout_s=0.5)

    stats_after, forwarded_after = counters(maps, router)
    assert ttls == []
    assert stats_after["passes"] - stats_before["passes"] >= PACKETS
    assert stats_after["hits"] == stats_before["hits"]
    assert forwarded_after == forwarded_before
    # The kernel sent ICMP time exceeded; its rate limit may drop some of them.
    assert read_snmp(router, "Icmp")["OutTimeExcds"] - time_exceeded_before > 0


def test_forward_stage_reports_mode(forwarding):
    # IFLA_XDP_ATTACHED: XDP_ATTACHED_DRV is 1, XDP_ATTACHED_SKB is 2 (<linux/if_link.h>).
    expected_attach_mode = {"native": 1, "generic": 2}[forwarding["mode"]]
    links = {link["ifname"]: link for link in ip_json("link", "show", netns_name=forwarding["router"])}
    for ifname in ("r0", "r1"):
        assert links[ifname]["xdp"]["mode"] == expected_attach_mode
        assert links[ifname]["xdp"]["prog"]["name"].startswith("neighbpf_forwar")


@pytest.fixture
def single_veth(netns_lab, pin_dir):
    """One namespace with a veth pair v0 -- v1 and pinned maps; yields (netns, ForwardStage)."""
    name = netns_lab.add_netns("x")
    netns_lab.add_veth(name, "v0", name, "v1")
    maps = PinnedMaps.open(pin_dir, create=True, max_entries=64)
    stage = ForwardStage(pin_dir)
    try:
        yield name, stage
    finally:
        with netns.entered(name):
            stage.detach("v0")
        stage.close()
        maps.close()


def test_attach_auto_prefers_native(single_veth):
    name, stage = single_veth
    with netns.entered(name):
        mode = stage.attach("v0")
    links = {link["ifname"]: link for link in ip_json("link", "show", netns_name=name)}
    # veth has native XDP support since Linux 4.19.
    assert mode == "native"
    assert stage.attached == {"v0": "native"}
    assert links["v0"]["xdp"]["mode"] == 1


def test_attach_keeps_existing_program(single_veth):
    name, stage = single_veth
    with netns.entered(name):
        stage.attach("v0", "generic")
        with pytest.raises(UsageError, match="already has an XDP program"):
            stage.attach("v0", "generic")


def test_attach_missing_interface(single_veth):
    name, stage = single_veth
    with netns.entered(name):
        with pytest.raises(UsageError, match="'nosuchdev0' not found"):
            stage.attach("nosuchdev0")
        stage.detach("nosuchdev0")
    assert stage.attached == {}


def test_detach_removes_program(single_veth):
    name, stage = single_veth
    with netns.entered(name):
        stage.attach("v0", "generic")
        stage.detach("v0")
    links = {link["ifname"]: link for link in ip_json("link", "show", netns_name=name)}
    assert "xdp" not in links["v0"]
    assert stage.attached == {}


def test_stage_requires_pins(pin_dir):
    with pytest.raises(UsageError, match="missing in"):
        ForwardStage(pin_dir)


def test_stage_compile_error_names_line(pin_dir, tmp_path, monkeypatch):
    broken = tmp_path / "forward.c"
    broken.write_text('#include "neighbpf.h"\nint neighbpf_forward(struct xdp_md *ctx) { return undefined_name; }\n')
    monkeypatch.setattr(xdp, "FORWARD_SOURCE", str(broken))
    maps = PinnedMaps.open(pin_dir, create=True, max_entries=64)
    try:
        with pytest.raises(UsageError, match="error: use of undeclared identifier 'undefined_name'"):
            ForwardStage(pin_dir)
    finally:
        maps.close()
