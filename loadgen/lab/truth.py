"""Ground truth: what every lab host saw and did, read from the kernel and the reflectors.

One `HostTruth` per host and IP version, built from that version's nftables counters on both
ends of its link (the root end's egress and ingress, the host's input and output), its shaper's
tbf on both ends, its reflector's own counts and, for information, /proc/net/snmp(6). Every
figure that feeds an expected count matches our probes only (`probematch`). `as_dict` makes
them JSON-ready.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pyroute2 import IPRoute

from loadgen.errors import LabError
from loadgen.lab.hostcfg import NFT_FAMILY, root_counter
from loadgen.lab.impair import ReflectorCounts
from loadgen.lab.netops import TBF_HANDLE, in_netns, nft_counters, read_snmp

CONTROL_TIMEOUT_S = 5.0
ROOT_KINDS = ("req_out", "rep_back", "err_back")


@dataclass(frozen=True, slots=True)
class LinkCounters:
    """The shaper (tbf) of one end of a host's link. Its filters let only our probes (or the
    answers to them) into it, so both figures count nothing else."""

    shaped_packets: int = 0  # passed on by tbf
    shaped_drops: int = 0  # dropped by tbf


@dataclass(frozen=True, slots=True)
class HostTruth:
    """Everything one host and its link can tell about the probes sent to it. Every count but
    the informational `requests_seen` (kernel) and `kernel_echo_replies` matches our probes, or
    the answers to them, only (`probematch`), of the one IP version `family`."""

    address: str
    name: str
    netns: str
    responder: str  # "kernel" or "reflector"
    requests_out: int  # probes that left the root end of the link for this host (nft egress)
    echo_requests_in: int  # probes that reached the host's input hook (nft counter)
    nft_dropped_every: int  # dropped by drop_every (nft numgen inc)
    nft_dropped_random: int  # dropped by drop (nft numgen random)
    requests_seen: int  # echo requests the responder saw (reflector's count / kernel InEchos)
    kernel_echo_replies: int  # Icmp OutEchoReps of the namespace (counts raw-socket replies too)
    echo_replies_out: int  # replies to probes that left the host (nft counter; duplicates too)
    icmp_errors_out: int  # unreachable / time exceeded quoting a probe that left the host
    replies_back: int  # replies to probes that reached the root end of the link (nft ingress)
    errors_back: int  # errors quoting a probe that reached the root end of the link
    reflector: ReflectorCounts | None
    host_link: LinkCounters  # the host's end, inside its namespace: answers go through it
    root_link: LinkCounters  # the root-namespace end: loadgen's probes go through it
    family: int = 4  # the IP version of `address`, and of every figure here
    nft_dropped_limit: int = 0  # dropped by echo_limit_pps (nft limit rate)

    @property
    def nft_dropped(self) -> int:
        return self.nft_dropped_every + self.nft_dropped_random + self.nft_dropped_limit

    @property
    def lost_towards_host(self) -> int:
        """Probes that left for the host but never reached its input hook (the root end's tbf,
        or a full backlog on the way)."""
        return self.requests_out - self.echo_requests_in

    @property
    def lost_on_the_way_back(self) -> int:
        """Answers that left the host but never reached the root end (the host end's tbf...)."""
        return self.echo_replies_out + self.icmp_errors_out - self.replies_back - self.errors_back

    @property
    def responder_missed(self) -> int:
        """Probes past nftables the responder never saw (e.g. a full socket buffer); for the
        kernel, probes past nftables it did not answer."""
        past_nft = self.echo_requests_in - self.nft_dropped
        if self.reflector is not None:
            return past_nft - self.reflector.requests_seen
        return past_nft - self.echo_replies_out

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


def _tbf_stats(qdiscs: list[Any], index: int, handle: int) -> tuple[int, int]:
    for q in qdiscs:
        if q["index"] == index and q["handle"] == handle and q.get_attr("TCA_KIND") == "tbf":
            stats = q.get_attr("TCA_STATS2")
            basic = stats.get_attr("TCA_STATS_BASIC")
            queue = stats.get_attr("TCA_STATS_QUEUE")
            return int(basic["packets"]), int(queue["drops"])
    return 0, 0


def link_counters(ipr: IPRoute, ifname: str, version: int = 4) -> LinkCounters:
    """The IP `version` shaper's counters on link `ifname` in the namespace `ipr` talks to
    (zeros if the link is gone or not shaped)."""
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        return LinkCounters()
    qdiscs = list(ipr.get_qdiscs(index=found[0]))
    sent, drops = _tbf_stats(qdiscs, found[0], TBF_HANDLE[version])
    return LinkCounters(shaped_packets=sent, shaped_drops=drops)


def host_truth(
    *,
    address: str,
    name: str,
    netns: str,
    ns_ifname: str,
    table: str,
    control_path: str | None,
    root_link: LinkCounters,
    root_counters: Mapping[str, int],
    index: int,
    version: int = 4,
) -> HostTruth:
    """Read one host's truth for IP `version`; `root_counters` are the lab's root-table
    counters (host `index`'s carry its index and version). The reflector is asked first: it is
    the slowest to change."""
    reflector = ReflectorCounts.from_dict(query_reflector(control_path)) if control_path else None
    snmp = in_netns(netns, read_snmp)
    icmp: Mapping[str, int] = snmp.get("Icmp" if version == 4 else "Icmp6", {})
    counters = nft_counters(netns, table, NFT_FAMILY[version])
    with IPRoute(netns=netns) as nsr:
        host_link = link_counters(nsr, ns_ifname, version)
    root = {k: root_counters.get(root_counter(k, index, version), 0) for k in ROOT_KINDS}
    return HostTruth(
        address=address,
        name=name,
        netns=netns,
        responder="reflector" if reflector else "kernel",
        requests_out=root["req_out"],
        echo_requests_in=counters.get("req_in", 0),
        nft_dropped_every=counters.get("drop_every", 0),
        nft_dropped_random=counters.get("drop_random", 0),
        nft_dropped_limit=counters.get("drop_limit", 0),
        requests_seen=reflector.requests_seen if reflector else icmp.get("InEchos", 0),
        kernel_echo_replies=icmp.get("OutEchoReps" if version == 4 else "OutEchoReplies", 0),
        echo_replies_out=counters.get("rep_out", 0),
        icmp_errors_out=counters.get("err_out", 0),
        replies_back=root["rep_back"],
        errors_back=root["err_back"],
        reflector=reflector,
        host_link=host_link,
        root_link=root_link,
        family=version,
    )
