"""The TCP truth of one lab host and IP version, and what loadgen must report from it.

`TcpTruth` holds the nft counters of the host's TCP services (SYNs out of the root end and into
the host, filtered and randomly dropped SYNs, SYN-ACKs and RSTs out of the host and back at the
root end), which count our probes only (`probematch`), and, for information, the namespace's
own TCP counters (/proc/net/snmp Tcp, /proc/net/netstat TcpExt: shared by both IP versions and
by anything else in the namespace). `tcp_expected` derives the outcome counts from the former.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from loadgen.lab.compare import AmbiguousTruth

# (field, group, name) of the namespace's kernel counters a TcpTruth carries.
KERNEL_COUNTERS = (
    ("active_opens", "Tcp", "ActiveOpens"),
    ("passive_opens", "Tcp", "PassiveOpens"),
    ("attempt_fails", "Tcp", "AttemptFails"),
    ("out_rsts", "Tcp", "OutRsts"),
    ("syncookies_sent", "TcpExt", "SyncookiesSent"),
    ("listen_drops", "TcpExt", "ListenDrops"),
    ("listen_overflows", "TcpExt", "ListenOverflows"),
)


@dataclass(frozen=True, slots=True)
class TcpTruth:
    """One host's TCP figures for IP version `family`. The nft figures count SYNs from the lab
    range to the ports the host serves and the answers to them; the kernel figures (from
    `active_opens` on) are the namespace's, for both versions together."""

    address: str
    name: str
    family: int
    syn_out: int  # SYNs that left the root end of the link for the host (nft egress)
    syn_in: int  # SYNs that reached the host's input hook
    syn_filtered: int  # dropped there: to a filtered port
    syn_rejected: int  # answered there with an ICMP unreachable: to an unreachable port
    syn_dropped: int  # dropped there: the random share (tcp_drop)
    synack_out: int  # SYN-ACKs from open ports (a listener, or a SYN cookie) leaving the host
    rst_out: int  # RSTs from closed ports leaving the host
    synack_back: int  # SYN-ACKs that reached the root end (nft ingress)
    rst_back: int  # RSTs that reached the root end
    active_opens: int = 0
    passive_opens: int = 0
    attempt_fails: int = 0
    out_rsts: int = 0
    syncookies_sent: int = 0
    listen_drops: int = 0
    listen_overflows: int = 0

    def since(self, before: TcpTruth) -> TcpTruth:
        """The part of this truth that happened after `before` (same host and version)."""
        if (self.address, self.family) != (before.address, before.family):
            raise ValueError(f"TCP truths of two hosts: {self.address} and {before.address}")
        return replace(
            self,
            **{
                f.name: getattr(self, f.name) - getattr(before, f.name)
                for f in fields(self)
                if isinstance(getattr(self, f.name), int) and f.name != "family"
            },
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class TcpExpected:
    """What loadgen must report for one host's TCP probes: `received` handshakes (a SYN-ACK),
    `refused` ones (a RST; loadgen counts them received and apart as refused), `errored` (an
    ICMP error came back for the SYN), `lost` SYNs."""

    sent: int
    received: int
    refused: int
    lost: int
    errored: int = 0


def tcp_expected(t: TcpTruth) -> TcpExpected:
    """Outcome counts from one run's truth, when every probe sent one SYN (a timeout below the
    kernel's 1 s first retransmission, or SYN mode) and got at most one answer: an answer that
    came back is received (a RST also refused), a SYN answered with an ICMP error errored (the
    lab's link loses nothing on the way back), any other SYN lost. The host's TCP may drop a
    SYN itself (a full accept queue: ListenDrops), which only the namespace-wide kernel counter
    sees, so it must explain the gap between SYNs that got past nft and answers. Raises
    AmbiguousTruth when the counters do not add up that way."""
    lost_on_link = t.syn_out - t.syn_in
    answered_at_host = t.synack_out + t.rst_out
    unanswered = t.syn_in - t.syn_filtered - t.syn_rejected - t.syn_dropped - answered_at_host
    if lost_on_link < 0 or not 0 <= unanswered <= t.listen_drops:
        raise AmbiguousTruth(
            f"{t.name}: {t.syn_out} SYNs out, {t.syn_in} in, {t.syn_filtered + t.syn_dropped} "
            f"dropped by nft, {answered_at_host} answered, {t.listen_drops} listen drops: "
            "retransmissions or a busy lab; use a probe timeout below 1 s and read a quiet lab"
        )
    if (t.synack_back, t.rst_back) != (t.synack_out, t.rst_out):
        raise AmbiguousTruth(
            f"{t.name}: {answered_at_host} answers left the host, "
            f"{t.synack_back + t.rst_back} came back: which probes they answered is unknown"
        )
    received = t.synack_back + t.rst_back
    return TcpExpected(
        sent=t.syn_out,
        received=received,
        refused=t.rst_back,
        lost=t.syn_out - received - t.syn_rejected,
        errored=t.syn_rejected,
    )
