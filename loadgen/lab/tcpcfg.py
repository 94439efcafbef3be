"""How a lab host serves TCP: its nftables counters and drops, its sysctls, its listener's
command line. Pure text and values from a host's `Impairments` (the tcp_* keys); `tcphost`
applies them and reads the counters back. Every rule matches SYNs from the lab range to the
ports the host serves, or its answers to them, only (`probematch`): the truth counts our
probes and nothing else.
"""

from __future__ import annotations

import sys

from loadgen.lab.hostcfg import DROP_SCALE, NFT_FAMILY, netdev_table, root_counter
from loadgen.lab.probematch import tcp_rst, tcp_syn, tcp_synack
from loadgen.lab.spec import Impairments

HOST_COUNTERS = ("syn_in", "syn_filtered", "syn_rejected", "syn_dropped", "synack_out", "rst_out")
# What nft answers a SYN to an unreachable port with: an ICMP error quoting it, EHOSTUNREACH to
# the sender (IPv6's is a soft error to a connect: it surfaces through IPV6_RECVERR).
REJECT = {
    4: "reject with icmp type host-unreachable",
    6: "reject with icmpv6 type addr-unreachable",
}
ROOT_KINDS = ("syn_out", "synack_back", "rst_back")
# A listener's accept queue is capped by the namespace's somaxconn; never below the default.
SOMAXCONN_FLOOR = 4096
LISTENER_MODULE = "loadgen.lab.listener"


def tcp_table(prefix: str) -> str:
    """The host's TCP table (one per IP version, in its namespace), apart from the ICMP one."""
    return f"{prefix}_tcp"


def host_tcp_ruleset(table: str, imp: Impairments, version: int) -> str:
    """The host's TCP table for IP `version`: every SYN to a served port counted, then the
    filtered ports' SYNs dropped, the unreachable ports' answered with an ICMP error, then a
    random share of the rest (`tcp_drop`); SYN-ACKs from
    open ports and RSTs from closed ones counted on the way out. Priority -5: after the ICMP
    table's input chain (-10), which never looks at TCP."""
    served = imp.tcp_ports
    rules = [f'{tcp_syn(version, served)} counter name "syn_in"']
    if imp.tcp_filtered:
        rules.append(f'{tcp_syn(version, imp.tcp_filtered)} counter name "syn_filtered" drop')
    if imp.tcp_unreachable:
        syn = tcp_syn(version, imp.tcp_unreachable)
        rules.append(f'{syn} counter name "syn_rejected" {REJECT[version]}')
    if imp.tcp_drop > 0:
        below = round(imp.tcp_drop * DROP_SCALE)
        rules.append(
            f"{tcp_syn(version, served)} numgen random mod {DROP_SCALE} < {below} "
            'counter name "syn_dropped" drop'
        )
    out = []
    if imp.tcp_open:
        out.append(f'{tcp_synack(version, imp.tcp_open)} counter name "synack_out"')
    if imp.tcp_closed:
        out.append(f'{tcp_rst(version, imp.tcp_closed)} counter name "rst_out"')
    sep = "\n    "
    counters = "\n  ".join(f"counter {c} {{}}" for c in HOST_COUNTERS)
    return f"""table {NFT_FAMILY[version]} {table} {{
  {counters}
  chain input {{
    type filter hook input priority -5; policy accept;
    {sep.join(rules)}
  }}
  chain output {{
    type filter hook output priority 0; policy accept;
    {sep.join(out)}
  }}
}}
"""


def root_tcp_ruleset(table: str, index: int, ifname: str, imp: Impairments) -> str:
    """Host `index`'s TCP chains in the lab's root-namespace netdev table: SYNs of either IP
    version that left for it, SYN-ACKs and RSTs that came back. Added to the table the ICMP
    counters live in, so a lab's teardown removes them with it."""
    counters, out, back = [], [], []
    for version in (4, 6):
        names = {k: root_counter(k, index, version) for k in ROOT_KINDS}
        counters += [f"counter {n} {{}}" for n in names.values()]
        out.append(f'{tcp_syn(version, imp.tcp_ports)} counter name "{names["syn_out"]}"')
        if imp.tcp_open:
            synack = tcp_synack(version, imp.tcp_open)
            back.append(f'{synack} counter name "{names["synack_back"]}"')
        if imp.tcp_closed:
            back.append(f'{tcp_rst(version, imp.tcp_closed)} counter name "{names["rst_back"]}"')
    return netdev_table(table, index, ifname, "tcp_", counters, out, back)


# The kernel rate-limits the ICMP errors nft's reject sends (per peer, and all together):
# exempting every type lets each rejected SYN get its error, so the counter counts errors sent.
NO_ICMP_LIMITS = {"net.ipv4.icmp_ratemask": "0", "net.ipv6.icmp.ratemask": "0"}


def tcp_sysctls(imp: Impairments) -> dict[str, str]:
    """The namespace's TCP settings: room for the listener's backlog, SYN cookies as asked
    (net.ipv4.tcp_syncookies covers IPv6 too; 2 sends a cookie for every SYN), and no ICMP
    rate limit where SYNs are rejected."""
    out = {"net.core.somaxconn": str(max(SOMAXCONN_FLOOR, imp.tcp_backlog))}
    if imp.tcp_unreachable:
        out.update(NO_ICMP_LIMITS)
    if imp.tcp_syncookies >= 0:
        out["net.ipv4.tcp_syncookies"] = str(imp.tcp_syncookies)
    return out


def listener_command(
    ports: tuple[int, ...], backlog: int, stats_path: str, die_with_parent: bool
) -> list[str]:
    """`python -m loadgen.lab.listener ...`: accepts and closes on `ports`, both IP versions."""
    cmd = [sys.executable, "-m", LISTENER_MODULE, "--ports", ",".join(map(str, ports))]
    cmd += ["--backlog", str(backlog), "--stats", stats_path]
    return cmd + (["--die-with-parent"] if die_with_parent else [])
