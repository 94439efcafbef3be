"""Ground truth: what every lab host saw and did, read from the kernel and the reflectors.

One `HostTruth` per host, built from the host namespace's nftables counters, /proc/net/snmp,
link and qdisc counters on both ends of its link, and its reflector's own counts. Tests compare
these numbers with loadgen's per-target results; `as_dict` makes them JSON-ready.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pyroute2 import IPRoute

from loadgen.errors import LabError
from loadgen.lab.impair import ReflectorCounts
from loadgen.lab.netops import in_netns, nft_counters, read_snmp

CONTROL_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class LinkCounters:
    """Counters of one end of a host's veth link, plus its root qdisc (tbf) if any."""

    rx_packets: int = 0
    tx_packets: int = 0
    rx_dropped: int = 0
    tx_dropped: int = 0
    qdisc_sent_packets: int = 0
    qdisc_drops: int = 0  # tbf drops on this end's egress


@dataclass(frozen=True, slots=True)
class HostTruth:
    """Everything one host can tell about the echo requests sent to it."""

    address: str
    name: str
    netns: str
    responder: str  # "kernel" or "reflector"
    echo_requests_in: int  # echo requests that reached the host's input hook (nft counter)
    nft_dropped_every: int  # dropped by drop_every (nft numgen inc)
    nft_dropped_random: int  # dropped by drop (nft numgen random)
    requests_seen: int  # echo requests that reached the responder (kernel InEchos / reflector)
    kernel_echo_replies: int  # Icmp OutEchoReps of the namespace (counts raw-socket replies too)
    echo_replies_out: int  # echo replies that left the host (nft counter; duplicates included)
    icmp_errors_out: int  # unreachable / time exceeded that left the host (nft counter)
    reflector: ReflectorCounts | None
    host_link: LinkCounters  # the host's end, inside its namespace
    root_link: LinkCounters  # the root-namespace end (what loadgen sends through)

    @property
    def nft_dropped(self) -> int:
        return self.nft_dropped_every + self.nft_dropped_random

    @property
    def responder_missed(self) -> int:
        """Requests past nftables that the responder never saw (e.g. a full socket buffer)."""
        return self.echo_requests_in - self.nft_dropped - self.requests_seen

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def query_reflector(control_path: str, command: str = "stats") -> dict[str, Any]:
    """Ask a reflector over its control socket; returns its JSON answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(CONTROL_TIMEOUT_S)
        try:
            s.connect(control_path)
            s.sendall(command.encode())
            answer: dict[str, Any] = json.loads(s.recv(65536))
        except (OSError, ValueError) as exc:
            raise LabError(
                f"reflector at {control_path} did not answer ({exc}); "
                "check `loadgen lab status` and bring the lab up again"
            ) from exc
    return answer


def _qdisc_stats(qdiscs: list[Any], index: int) -> tuple[int, int]:
    for q in qdiscs:
        if q["index"] == index and q.get_attr("TCA_KIND") == "tbf":
            stats = q.get_attr("TCA_STATS2")
            basic = stats.get_attr("TCA_STATS_BASIC")
            queue = stats.get_attr("TCA_STATS_QUEUE")
            return int(basic["packets"]), int(queue["drops"])
    return 0, 0


def link_counters(ipr: IPRoute, ifname: str) -> LinkCounters:
    """Counters of link `ifname` in the namespace `ipr` talks to (zeros if it is gone)."""
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        return LinkCounters()
    link = ipr.get_links(found[0])[0]
    st = link.get_attr("IFLA_STATS64") or {}
    sent, drops = _qdisc_stats(list(ipr.get_qdiscs(index=found[0])), found[0])
    return LinkCounters(
        rx_packets=int(st.get("rx_packets", 0)),
        tx_packets=int(st.get("tx_packets", 0)),
        rx_dropped=int(st.get("rx_dropped", 0)),
        tx_dropped=int(st.get("tx_dropped", 0)),
        qdisc_sent_packets=sent,
        qdisc_drops=drops,
    )


def host_truth(
    *,
    address: str,
    name: str,
    netns: str,
    ns_ifname: str,
    table: str,
    control_path: str | None,
    root_link: LinkCounters,
) -> HostTruth:
    """Read one host's truth. The reflector is asked first: it is the slowest to change."""
    reflector = ReflectorCounts.from_dict(query_reflector(control_path)) if control_path else None
    snmp = in_netns(netns, read_snmp)
    icmp: Mapping[str, int] = snmp.get("Icmp", {})
    counters = nft_counters(netns, table)
    with IPRoute(netns=netns) as nsr:
        host_link = link_counters(nsr, ns_ifname)
    return HostTruth(
        address=address,
        name=name,
        netns=netns,
        responder="reflector" if reflector else "kernel",
        echo_requests_in=counters.get("req_in", 0),
        nft_dropped_every=counters.get("drop_every", 0),
        nft_dropped_random=counters.get("drop_random", 0),
        requests_seen=reflector.requests_seen if reflector else icmp.get("InEchos", 0),
        kernel_echo_replies=icmp.get("OutEchoReps", 0),
        echo_replies_out=counters.get("rep_out", 0),
        icmp_errors_out=counters.get("err_out", 0),
        reflector=reflector,
        host_link=host_link,
        root_link=root_link,
    )
