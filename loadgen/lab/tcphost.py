"""A lab host's TCP services on the kernel side: its nft tables and sysctls, its listener
process, and its TCP truth read back from the counters.

Applied by `lab_up` to hosts whose spec has tcp_* keys (`tcpcfg` builds the text). The
listener runs inside the host's namespace like a reflector, and is stopped like one.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from functools import partial
from pathlib import Path

from loadgen.errors import LabError
from loadgen.lab.hostcfg import NFT_FAMILY, root_counter
from loadgen.lab.netops import in_netns, nft, nft_counters, parse_snmp, write_sysctl
from loadgen.lab.procs import spawn_in_netns, wait_ready_line
from loadgen.lab.state import LabHost
from loadgen.lab.tcpcfg import (
    ROOT_KINDS,
    host_tcp_ruleset,
    listener_command,
    root_tcp_ruleset,
    tcp_sysctls,
    tcp_table,
)
from loadgen.lab.tcptruth import KERNEL_COUNTERS, TcpTruth

READY_TIMEOUT_S = 30.0  # python start-up on a busy 2-core machine


def apply_tcp(host: LabHost, prefix: str, root_table: str) -> None:
    """The host's TCP tables (both IP versions), sysctls and root-end counters."""
    imp = host.impairments
    for key, value in tcp_sysctls(imp).items():
        in_netns(host.netns, partial(write_sysctl, key, value))
    for version in (4, 6):
        nft(host.netns, ["-f", "-"], stdin=host_tcp_ruleset(tcp_table(prefix), imp, version))
    nft(None, ["-f", "-"], stdin=root_tcp_ruleset(root_table, host.index, host.root_ifname, imp))


def start_listener(
    host: LabHost, rdir: Path, detached: bool
) -> tuple[subprocess.Popen[bytes], int]:
    """Start the host's listener in its namespace and wait until it listens; returns the
    process this one started and the listener's pid (another one when `detached`)."""
    imp = host.impairments
    stats = str(rdir / f"{host.name}.listener.json")
    argv = listener_command(imp.tcp_open, imp.tcp_backlog, stats, not detached)
    log = rdir / f"{host.name}.listener.log"
    proc = spawn_in_netns(host.netns, argv, log, detached)
    pid = wait_ready_line(proc, READY_TIMEOUT_S)
    if pid is None:
        proc.kill()
        proc.wait()
        raise LabError(f"TCP listener of lab host {host.name} did not start; see {log}")
    return proc, pid


def read_tcp_truth(
    host: LabHost, prefix: str, root_counters: Mapping[str, int], version: int
) -> TcpTruth:
    """One host's TCP truth for IP `version`; `root_counters` are the lab's root-table counters."""
    counters = nft_counters(host.netns, tcp_table(prefix), NFT_FAMILY[version])
    kernel = in_netns(host.netns, _read_tcp_mibs)
    root = {k: root_counters.get(root_counter(k, host.index, version), 0) for k in ROOT_KINDS}
    return TcpTruth(
        address=host.address_of(version),
        name=host.name,
        family=version,
        **root,
        **{k: counters.get(k, 0) for k in ("syn_in", "syn_filtered", "syn_rejected")},
        syn_dropped=counters.get("syn_dropped", 0),
        synack_out=counters.get("synack_out", 0),
        rst_out=counters.get("rst_out", 0),
        **{f: kernel.get(group, {}).get(name, 0) for f, group, name in KERNEL_COUNTERS},
    )


def _read_tcp_mibs() -> dict[str, dict[str, int]]:
    """/proc/net/snmp and /proc/net/netstat of the calling thread's namespace."""
    out: dict[str, dict[str, int]] = {}
    for name in ("snmp", "netstat"):
        with open(f"/proc/thread-self/net/{name}", encoding="ascii") as f:
            out.update(parse_snmp(f.read()))
    return out
