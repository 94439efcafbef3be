"""What a probe is: the `ProbeKind` names that the profile, the plan and the messages carry, which
kinds need a destination port and which this build can send. Pure. The worker side of a kind
(socket, batch builder, vectorised decoder, BPF program, destination column) is in
`loadgen.kinds`; a new kind adds its name to IMPLEMENTED and its setup to `kinds.SETUPS`.
"""

from __future__ import annotations

from enum import StrEnum


class ProbeKind(StrEnum):
    ICMP = "icmp"  # ICMP / ICMPv6 echo request through a raw socket
    TCP_SYN = "tcp-syn"  # half-open SYN through a raw TCP socket (root)
    TCP_CONNECT = "tcp-connect"  # a full handshake through the kernel (any user)
    UDP = "udp"  # a UDP datagram to a port
    STAMP = "stamp"  # an RFC 8762 STAMP test packet to a reflector


# Kinds that go to a port, and the port a kind goes to when the profile names none.
PORT_KINDS = frozenset({ProbeKind.TCP_SYN, ProbeKind.TCP_CONNECT, ProbeKind.UDP, ProbeKind.STAMP})
DEFAULT_PORTS: dict[ProbeKind, tuple[int, ...]] = {ProbeKind.STAMP: (862,)}  # RFC 8762 sec. 4
# Kinds this build can send: each has a setup in `kinds.SETUPS` (a test keeps the two equal).
# The plan refuses any other kind with one line, before a process starts.
IMPLEMENTED = frozenset(ProbeKind)  # every kind has its setup in kinds.SETUPS
