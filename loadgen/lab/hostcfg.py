"""How each lab host is configured: its nftables tables and its reflector's settings and seed.

Pure text and values built from a host's `Impairments`; `lab` applies them. Every counter and
drop rule matches our probes (or the answers to them) only: see `probematch`. A host has one
table per IP version (`ip` and `ip6`, same name and counter names); the root end's netdev table
counts both versions, the IPv6 counters named with a "6" after their kind.
"""

from __future__ import annotations

import hashlib

from loadgen.lab.impair import ReflectorConfig
from loadgen.lab.probematch import MATCHES
from loadgen.lab.spec import DropBy, Impairments, JitterDist
from loadgen.lab.state import LabHost

DROP_SCALE = 1_000_000  # nft numgen random mod DROP_SCALE < share * DROP_SCALE


NFT_FAMILY = {4: "ip", 6: "ip6"}


def nft_ruleset(table: str, imp: Impairments, version: int = 4) -> str:
    """The host's nftables table for IP `version`: counters always, numgen drops when the spec
    asks for them (each version draws and counts its own)."""
    REQUEST, REPLY, ERROR = MATCHES[version]  # noqa: N806 - the module-level names of probematch
    rules = [f'{REQUEST} counter name "req_in"']
    if imp.drop_by is DropBy.NFT and imp.drop_every > 0:
        # numgen inc starts at 0, so "== N-1" drops the N-th, 2N-th, ... probe; it only
        # counts packets that got past the probe match before it.
        # With drop_run R: ">= N-R" drops the last R of every N, R probes in a row.
        n, run = imp.drop_every, max(1, imp.drop_run)
        pick = f"== {n - 1}" if run == 1 else f">= {n - run}"
        rules.append(f'{REQUEST} numgen inc mod {n} {pick} counter name "drop_every" drop')
    if imp.drop_by is DropBy.NFT and imp.drop > 0:
        below = round(imp.drop * DROP_SCALE)
        rules.append(
            f'{REQUEST} numgen random mod {DROP_SCALE} < {below} counter name "drop_random" drop'
        )
    if imp.echo_limit_pps > 0:
        # A token bucket in the kernel: requests beyond the rate (after a burst of 10 ms of
        # it, so a sender's late 1 ms tick is not loss) are dropped before any responder sees
        # them: a device of known capacity.
        burst = max(5, imp.echo_limit_pps // 100)
        rules.append(
            f"{REQUEST} limit rate over {imp.echo_limit_pps}/second burst {burst} packets "
            'counter name "drop_limit" drop'
        )
    fwd, rev = (
        _remark(imp.remark_dscp_fwd, imp.remark_ecn_fwd, version),
        _remark(imp.remark_dscp_rev, imp.remark_ecn_rev, version),
    )
    rules = [*fwd, *rules]
    body = "\n    ".join(rules)
    return f"""table {NFT_FAMILY[version]} {table} {{
  counter req_in {{}}
  counter drop_every {{}}
  counter drop_random {{}}
  counter drop_limit {{}}
  counter rep_out {{}}
  counter err_out {{}}
  chain input {{
    type filter hook input priority -10; policy accept;
    {body}
  }}
  chain output {{
    type filter hook output priority 0; policy accept;
    {" ".join(rev)}
    {REPLY} counter name "rep_out"
    {ERROR} counter name "err_out"
  }}
}}
"""


def _remark(dscp: int, ecn: int, version: int) -> list[str]:
    """The statements that rewrite DSCP and ECN of every packet of the chain (none when off):
    what a router remarking traffic on that side of the host does."""
    field = NFT_FAMILY[version]
    out = [f"{field} dscp set {dscp}"] if dscp >= 0 else []
    return out + ([f"{field} ecn set {ecn}"] if ecn >= 0 else [])


def root_counter(kind: str, index: int, version: int) -> str:
    """The name of host `index`'s root-end counter `kind` ("req_out", "rep_back", "err_back")
    for IP `version`: "req_out_3" and "req6_out_3"."""
    if version == 4:
        return f"{kind}_{index}"
    head, tail = kind.split("_", 1)
    return f"{head}{version}_{tail}_{index}"


def root_ruleset(table: str, index: int, ifname: str) -> str:
    """Host `index`'s chains in the lab's root-namespace table: the probes of either IP version
    that left for it (egress, before the shaper) and the answers that came back (ingress)."""
    counters, out, back = [], [], []
    for version, (request, reply, error) in MATCHES.items():
        names = {k: root_counter(k, index, version) for k in ("req_out", "rep_back", "err_back")}
        counters += [f"counter {n} {{}}" for n in names.values()]
        out.append(f'{request} counter name "{names["req_out"]}"')
        back += [
            f'{reply} counter name "{names["rep_back"]}"',
            f'{error} counter name "{names["err_back"]}"',
        ]
    return netdev_table(table, index, ifname, "", counters, out, back)


def netdev_table(
    table: str,
    index: int,
    ifname: str,
    kind: str,
    counters: list[str],
    out: list[str],
    back: list[str],
) -> str:
    """Host `index`'s chains `<kind>out_<index>` (egress: towards the host) and
    `<kind>back_<index>` (ingress: its answers) with their counters, in the root-namespace
    netdev table; each kind has a chain of its own on the link's two hooks."""
    sep, counter_sep = "\n    ", "\n  "
    priority = 1 if kind else 0
    return f"""table netdev {table} {{
  {counter_sep.join(counters)}
  chain {kind}out_{index} {{
    type filter hook egress device "{ifname}" priority {priority}; policy accept;
    {sep.join(out)}
  }}
  chain {kind}back_{index} {{
    type filter hook ingress device "{ifname}" priority {priority}; policy accept;
    {sep.join(back)}
  }}
}}
"""


def host_seed(lab_seed: int, index: int, version: int = 4) -> int:
    """A reflector's seed: stable per (lab seed, host index, IP version), unrelated between
    hosts and between a host's two reflectors."""
    key = f"{lab_seed}:{index}" if version == 4 else f"{lab_seed}:{index}:{version}"
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def reflector_config(
    host: LabHost, seed: int, stats_path: str, die_with_parent: bool, version: int = 4
) -> ReflectorConfig:
    imp = host.impairments
    in_reflector = imp.drop_by is DropBy.REFLECTOR
    return ReflectorConfig(
        seed=seed,
        drop=imp.drop if in_reflector else 0.0,
        drop_every=imp.drop_every if in_reflector else 0,
        drop_run=imp.drop_run if in_reflector else 0,
        delay_ns=round(imp.delay_ms * 1e6),
        jitter_ns=round(imp.jitter_ms * 1e6),
        jitter_normal=imp.jitter_dist is JitterDist.NORMAL,
        duplicate=imp.duplicate,
        reorder=imp.reorder,
        bitflip=imp.bitflip,
        corrupt=imp.corrupt,
        unreachable=imp.unreachable,
        time_exceeded=imp.time_exceeded,
        ratelimit_pps=imp.icmp_ratelimit_pps,
        ratelimit_burst=imp.icmp_ratelimit_burst,
        control_path=(host.control_path if version == 4 else host.control_path6) or "",
        stats_path=stats_path,
        die_with_parent=die_with_parent,
        version=version,
        address=host.address if version == 4 else host.address6,
    )
