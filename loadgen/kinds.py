"""What each probe kind gives a worker: the seam between the one worker loop and the kinds.

A kind's setup (`SETUPS[kind]`, called once per worker with its plan and family) opens the
worker's socket with the kind's BPF program attached and returns a `KindIO`: the batched I/O
over that socket (receive slots sized for the kind's largest reply), a batch builder, a
vectorised decoder to the tracker's columns, the destination column `BatchIO.send` takes and
the address column the tracker finds quoted destinations in. The worker paces, sends, receives,
tracks and ships the same way for every kind; a new kind is a setup here plus its name in
`probekind.IMPLEMENTED` (the plan refuses every other kind before a process starts).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from loadgen.errors import UsageError
from loadgen.icmppath import DATAGRAM_NOTE, LABELS, IcmpPath
from loadgen.net import linkpath
from loadgen.net.batchio import BatchIO
from loadgen.net.families import ipv6_names, route_sources
from loadgen.net.sockets import IcmpSocket, TimestampMode, open_icmp
from loadgen.net.tcpconnect import ConnectIO, connect_name
from loadgen.net.udp import UdpBatchIO, open_udp_probe, udp_destinations
from loadgen.stamp_figures import StampFigures
from loadgen.wire import bpf, tcp
from loadgen.wire.batch import DecodedBatch, EchoBuilder, Ipv4Headers, ReplyDecoder
from loadgen.wire.connect import ConnectDecoder, ConnectRows
from loadgen.wire.family import WireFamily
from loadgen.wire.icmp import ICMP_HEADER_LEN, IPV4_HEADER_LEN, MIN_PAYLOAD, QueuedError
from loadgen.wire.messages import PlanMsg, ProbeSettings
from loadgen.wire.probekind import ProbeKind
from loadgen.wire.stamp_batch import (
    StampBuilder,
    StampDecoder,
    UdpEchoBuilder,
    UdpEchoDecoder,
    stamp_spec,
)


class BatchBuilder(Protocol):
    def build(
        self, local: NDArray[np.int64], seqs: NDArray[np.uint64], tx_ns: int
    ) -> NDArray[np.uint8]:
        """Rows of packets, row i the probe with sequence seqs[i] to the worker's local target
        local[i], stamped tx_ns where the kind carries a send time. Valid until the next build."""
        ...


class BatchDecoder(Protocol):
    def decode(self, buf: NDArray[np.uint8], lengths: NDArray[np.integer], n: int) -> DecodedBatch:
        """Rows 0..n-1 of buf (row i holds lengths[i] bytes) as the tracker's columns."""
        ...


class QueuedDecoder(Protocol):
    def decode_queued(self, errors: Sequence[QueuedError]) -> DecodedBatch:
        """ICMP errors a datagram socket queued about its probes, as the tracker's columns."""
        ...


class Extras(Protocol):
    def on_replies(
        self, dec: DecodedBatch, rx_ns: NDArray[np.int64], rx_flags: NDArray[np.uint8]
    ) -> None:
        """See a decoded batch after the tracker did (same rows, with their RX stamps)."""
        ...

    def take(self, records: NDArray[np.void]) -> NDArray[np.void]:
        """The tracker's records of a frame, with the kind's own added."""
        ...


class _StampExtras:
    """STAMP's one-way samples, loss directions and DSCP/ECN per direction (`stamp_figures`),
    fed from the decoder's reflector columns of the batch just decoded and, with the Class of
    Service TLV, the TOS each reply arrived with (the socket's last receive)."""

    def __init__(
        self, decoder: StampDecoder, keep_ns: int, io: UdpBatchIO, sent_tos: int | None
    ) -> None:
        self.decoder, self.io = decoder, io
        self.figures = StampFigures(keep_ns, sent_tos)

    def on_replies(
        self, dec: DecodedBatch, rx_ns: NDArray[np.int64], rx_flags: NDArray[np.uint8]
    ) -> None:
        d = self.decoder
        self.figures.on_replies(
            status=dec.status,
            target=dec.target,
            seq=dec.seq,
            tx_ns=dec.tx_ns,
            rx_ns=rx_ns,
            rx_flags=rx_flags,
            t2_ns=d.last_t2_ns,
            t3_ns=d.last_t3_ns,
            reflector_seq=d.last_reflector_seq,
            stateful=d.last_stateful,
            ttl=d.last_ttl,
            cos_fwd_tos=d.last_cos_tos,
            cos_rp=d.last_cos_rp,
            cos_rev_tos=self.io.last_tos,
        )

    def take(self, records: NDArray[np.void]) -> NDArray[np.void]:
        return self.figures.take(records)


@dataclass(slots=True)
class KindIO:
    """A worker's kind-specific half, open and ready; `close` releases what the kind holds."""

    io: BatchIO | ConnectIO
    builder: BatchBuilder
    decoder: BatchDecoder
    destinations: NDArray[np.generic]  # per local target: what BatchIO.send names it by
    addresses: NDArray[np.generic]  # per local target: the decoder's quoted_dst form
    tx_path: str = ""  # words for the Hello after the TX source, "" when nothing to add
    notes: list[str] = field(default_factory=list)
    # Read answers after every send: a kind whose waiting probes each hold a file descriptor
    # (a connect) frees them only by reading, so a worker behind its timetable, whose sending
    # turns would otherwise never read, must neither run out of them nor leave finished
    # handshakes unread past linger.
    receive_with_sends: bool = False
    # A second socket some kinds read: tcp-syn's ICMP errors quoting its SYNs.
    errors: BatchIO | None = None
    error_decoder: BatchDecoder | None = None
    # ICMP over a datagram socket and the UDP kinds: the errors quoting their probes wait on
    # the error queue, not among the packets, and this decoder reads them.
    queued_errors: QueuedDecoder | None = None
    extras: Extras | None = None  # a kind's records beyond the tracker's (STAMP: one-way)
    # Rewrites the send time a built batch carries (STAMP's T1, the UDP payload's): called
    # with the time read right before the send, so T1 is not early by the build's cost.
    restamp: Callable[[NDArray[np.uint8], int], None] | None = None

    def close(self) -> None:
        self.io.close()
        if self.errors is not None:
            self.errors.close()


Setup = Callable[[PlanMsg, WireFamily], KindIO]


def target_addresses(plan: PlanMsg, fam: WireFamily) -> NDArray[np.generic]:
    """The worker's targets as the family's address column (u32 or V16), in local order."""
    return fam.address_column([ipaddress.ip_address(t.address).packed for t in plan.targets])


def destinations_of(
    plan: PlanMsg, fam: WireFamily, addresses: NDArray[np.generic]
) -> NDArray[np.generic]:
    """Where each probe goes for a raw IP send: its IPv4 address, or an IPv6 sockaddr_in6
    (with the scope of a link-local target)."""
    return addresses if fam.version == 4 else ipv6_names([t.address for t in plan.targets])


class _EchoBatches:
    """ICMP's builder: echo requests to global target indexes, and on the link path the IPv4
    headers the kernel does not write there."""

    def __init__(
        self, echo: EchoBuilder, global_index: NDArray[np.uint32], headers: Ipv4Headers | None
    ) -> None:
        self.echo, self.global_index, self.headers = echo, global_index, headers

    def build(
        self, local: NDArray[np.int64], seqs: NDArray[np.uint64], tx_ns: int
    ) -> NDArray[np.uint8]:
        packets = self.echo.build(self.global_index[local], seqs, tx_ns)
        if self.headers is not None:
            self.headers.write(packets, local, seqs)
        return packets


def _raw(
    probe: ProbeSettings,
    fam: WireFamily,
    program: list[bpf.Instr] | None,
    protocol: int | None = None,
    *,
    datagram: bool = False,
) -> IcmpSocket:
    """A raw socket of the family (ICMP unless `protocol`) with the run's options and `program`
    (a datagram ICMP socket with `datagram`: the kernel filters its replies itself)."""
    return open_icmp(
        family=fam.version,
        ttl=probe.ttl,
        tos=probe.tos,
        timestamps=TimestampMode(probe.timestamps),
        bpf_program=None if program is None else bpf.pack(program),
        interface=probe.interface or None,
        source=probe.source or None,
        protocol=protocol,
        datagram=datagram,
    )


def _icmp(plan: PlanMsg, fam: WireFamily) -> KindIO:
    probe = plan.settings
    datagram = probe.icmp_socket == IcmpPath.DATAGRAM
    program = None if datagram else bpf.echo_filter(fam, plan.ident)
    sock = _raw(probe, fam, program, datagram=datagram)
    # A datagram socket's identifier is the kernel's: it rewrites every request's to it.
    ident = plan.ident if sock.ident is None else sock.ident
    # A receive slot holds the largest reply: IPv4 header with options, ICMP, payload
    # (an ICMPv6 socket gives the message alone).
    io = BatchIO(sock, slot_bytes=max(2048, 60 + ICMP_HEADER_LEN + probe.size))
    addresses = target_addresses(plan, fam)
    global_index = np.array([t.index for t in plan.targets], dtype=np.uint32)
    decoder = ReplyDecoder(
        ident, plan.run_id, probe.size, family=fam, ip_header=fam.rx_ip_header and not datagram
    )
    kind = KindIO(
        io=io,
        builder=_EchoBatches(
            EchoBuilder(ident, plan.run_id, probe.size, 0, fam), global_index, None
        ),
        decoder=decoder,
        destinations=destinations_of(plan, fam, addresses),
        addresses=addresses,
        queued_errors=decoder if datagram else None,
    )
    if datagram:
        kind.notes.append(f"{LABELS[IcmpPath.DATAGRAM]}: {DATAGRAM_NOTE}")
    if probe.tx_path == "packet":
        try:
            _use_link_path(plan, fam, kind, global_index)
        except BaseException:
            kind.close()
            raise
    return kind


def _use_link_path(
    plan: PlanMsg, fam: WireFamily, kind: KindIO, global_index: NDArray[np.uint32]
) -> None:
    """Resolve every target's next hop and send through a packet socket from now on, with
    the IPv4 headers written per batch in the room the builder leaves for them."""
    probe = plan.settings
    interface, source = probe.interface, probe.source
    hops = linkpath.resolve_hops(
        [int(a) for a in kind.addresses], interface=interface, source=source
    )
    assert isinstance(kind.io, BatchIO)  # the link path is ICMP's
    kind.io.use_link_tx(linkpath.open_link_tx(interface=interface), linkpath.SOCKADDR_LL.size)
    names = b"".join(hop.sockaddr() for hop in hops)
    kind.destinations = np.frombuffer(names, np.uint8).reshape(len(hops), -1)
    headers = Ipv4Headers(
        np.array([hop.source for hop in hops], np.uint32),
        kind.addresses.astype(np.uint32),  # the link path is IPv4 only (plan._check_families)
        ttl=probe.ttl,
        tos=probe.tos,
        total_len=IPV4_HEADER_LEN + ICMP_HEADER_LEN + probe.size,
    )
    echo = EchoBuilder(plan.ident, plan.run_id, probe.size, IPV4_HEADER_LEN, fam)
    kind.builder = _EchoBatches(echo, global_index, headers)
    links = ", ".join(sorted({hop.ifname for hop in hops}))
    kind.tx_path = f"written to the link (AF_PACKET on {links})"


def _tcp_syn(plan: PlanMsg, fam: WireFamily) -> KindIO:
    """A raw TCP socket of the family: the kernel writes the IP header, the builder the SYN
    with its checksum over the pseudo-header of the source the route picks for each target."""
    probe, base = plan.settings, tcp.port_base(plan.ident)
    sock = _raw(probe, fam, bpf.tcp_filter(fam, base, tcp.PORT_BLOCK), tcp.IPPROTO_TCP)
    # A reply is an IP header with options (60) and a TCP header with options (60), and a RST
    # may carry a little data: room to spare.
    io = BatchIO(sock, slot_bytes=512)
    errors: BatchIO | None = None
    try:
        errsock = _raw(probe, fam, bpf.tcp_error_filter(fam, base, tcp.PORT_BLOCK))
        # An error quotes at most the first 576 (IPv4) or 1280 (IPv6) bytes of the datagram.
        errors = BatchIO(errsock, batch=64, slot_bytes=1536)
        addresses = target_addresses(plan, fam)
        names = [t.address for t in plan.targets]
        sources = route_sources(
            names, fam.version, source=probe.source or None, interface=probe.interface or None
        )
        packed = [ipaddress.ip_address(name.partition("%")[0]).packed for name in names]
        syn = tcp.SynPlan(
            dports=np.array([t.port for t in plan.targets], np.uint16),
            pseudo=tcp.pseudo_sums(sources, packed, fam),
            base=base,
            cipher=tcp.IsnCipher(plan.run_id, plan.ident),
        )
        return KindIO(
            io=io,
            builder=tcp.SynBuilder(syn),
            decoder=tcp.SegmentDecoder(syn, fam),
            destinations=destinations_of(plan, fam, addresses),
            addresses=addresses,
            notes=_ephemeral_overlap(base),
            errors=errors,
            error_decoder=tcp.ErrorDecoder(syn, fam),
        )
    except BaseException:
        io.close()
        if errors is not None:
            errors.close()
        raise


def _ephemeral_overlap(base: int) -> list[str]:
    """A note if this host's ephemeral range (changed from Linux's default) covers the
    worker's source ports: a connection of this host could then share one with a probe."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as file:
            low, high = map(int, file.read().split())
    except (OSError, ValueError):
        return []
    last = base + tcp.PORT_BLOCK - 1
    if high < base or last < low:
        return []
    return [
        f"source ports {base}-{last} overlap net.ipv4.ip_local_port_range ({low}-{high}): a "
        "connection of this host may share one with a SYN probe"
    ]


def _tcp_connect(plan: PlanMsg, fam: WireFamily) -> KindIO:
    """Connects through the kernel: no raw socket, no filter (any user may). The destination
    column holds local target indexes; `ConnectIO` keeps the sockaddr of each."""
    probe = plan.settings
    names = [connect_name(t.address, t.port) for t in plan.targets]
    io = ConnectIO(
        fam.version,
        names,
        hold_ns=probe.timeout_ns,
        ttl=probe.ttl,
        tos=probe.tos,
        source=probe.source,
        interface=probe.interface,
    )
    global_index = np.array([t.index for t in plan.targets], dtype=np.uint32)
    addresses = target_addresses(plan, fam)
    return KindIO(
        io=io,
        builder=ConnectRows(),
        decoder=ConnectDecoder(global_index, addresses.dtype),
        destinations=np.arange(len(plan.targets), dtype=np.int64),
        addresses=addresses,
        tx_path="a TCP connect per probe (kernel handshake, closed with a RST)",
        receive_with_sends=True,
    )


def _udp_kinds(plan: PlanMsg, fam: WireFamily) -> KindIO:
    """STAMP test packets to a reflector, or loadgen's payload to a UDP echo service: one
    unprivileged UDP socket, each target's port in its destination row."""
    probe, stamp = plan.settings, plan.settings.kind is ProbeKind.STAMP
    if probe.tx_path == "packet":
        raise UsageError(f'tx_path = "packet" sends ICMP only: drop it for probe = "{probe.kind}"')
    sock = open_udp_probe(
        family=fam.version,
        ttl=probe.ttl,
        tos=probe.tos,
        timestamps=TimestampMode(probe.timestamps),
        interface=probe.interface or None,
        source=probe.source or None,
    )
    global_index = np.array([t.index for t in plan.targets], dtype=np.uint32)
    cos = stamp and probe.stamp_cos  # ask for our own DSCP back (RFC 8972 4.4)
    # The SSID names the worker.
    spec = stamp_spec(plan.run_id, plan.ident or 1, probe.size, probe.tos >> 2 if cos else -1)
    datagram = spec.size if stamp else probe.size
    # An error-queue slot keeps the quoted payload up to loadgen's header, which names the probe.
    quote = (spec.payload_at if stamp else 0) + MIN_PAYLOAD
    io = UdpBatchIO(sock, slot_bytes=max(2048, datagram + 64), quote_bytes=max(64, quote))
    if cos:
        io.read_tos()
    names = udp_destinations(
        [t.address for t in plan.targets], [t.port for t in plan.targets], fam.version
    )
    addresses = target_addresses(plan, fam)
    if not stamp:
        echo = UdpEchoBuilder(plan.run_id, probe.size, global_index)
        decode = UdpEchoDecoder(plan.run_id, probe.size, fam)
        return KindIO(
            io, echo, decode, names, addresses, queued_errors=decode, restamp=echo.restamp
        )
    decoder = StampDecoder(spec, fam)
    keep_ns = 2 * probe.linger_ns + 1_000_000_000
    extras = _StampExtras(decoder, keep_ns, io, probe.tos if cos else None)
    builder = StampBuilder(spec, global_index)
    return KindIO(
        io,
        builder,
        decoder,
        names,
        addresses,
        queued_errors=decoder,
        extras=extras,
        restamp=builder.restamp,
    )


# One entry per kind in probekind.IMPLEMENTED.
SETUPS: dict[ProbeKind, Setup] = {
    ProbeKind.ICMP: _icmp,
    ProbeKind.TCP_SYN: _tcp_syn,
    ProbeKind.TCP_CONNECT: _tcp_connect,
    ProbeKind.UDP: _udp_kinds,
    ProbeKind.STAMP: _udp_kinds,
}


def open_kind(plan: PlanMsg, fam: WireFamily) -> KindIO:
    """The worker's kind-specific half for its plan's probe kind."""
    return SETUPS[plan.settings.kind](plan, fam)
