"""Taking labs down and seeing what is up: by state file, and by name for what a crash left.

Order matters: reflectors first (a namespace with a process in it outlives its name), then the
root-side links (their veth peers go with them), then the namespaces, then stray nft tables,
the per-lab run directory and the state file.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute

from loadgen.errors import LabError
from loadgen.lab.addressing import LAB_NAME_RE, LAB_TABLE_RE, prefix_of
from loadgen.lab.netops import delete_link, delete_netns, list_netns, nft, nft_tables, ns_pids
from loadgen.lab.state import STATE_DIR, LabState, list_states, load_state, run_dir, state_path

ANY_PREFIX_RE = re.compile(r"^lg[a-z0-9]{1,6}$")
REFLECTOR_MARK = b"loadgen.lab.reflector"
# The lab's processes inside its namespaces (reflectors, TCP listeners, STAMP delay relays and
# the `loadgen reflect` each relay runs, whose JSONL is named after it): stopped at teardown.
LAB_PROCESS_MARKS = (REFLECTOR_MARK, b"loadgen.lab.listener", b"loadgen.lab.relay")
KILL_WAIT_S = 3.0


@dataclass(frozen=True, slots=True)
class Teardown:
    """What a `lab_down` removed."""

    prefixes: tuple[str, ...] = ()
    killed_pids: tuple[int, ...] = ()
    links: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()

    def __add__(self, other: Teardown) -> Teardown:
        return Teardown(
            self.prefixes + other.prefixes,
            self.killed_pids + other.killed_pids,
            self.links + other.links,
            self.namespaces + other.namespaces,
            self.tables + other.tables,
        )

    @property
    def empty(self) -> bool:
        return not (self.killed_pids or self.links or self.namespaces or self.tables)

    def summary(self) -> str:
        return (
            f"removed {len(self.namespaces)} namespaces, {len(self.links)} links, "
            f"{len(self.tables)} nft tables, stopped {len(self.killed_pids)} reflectors"
        )


@dataclass(frozen=True, slots=True)
class LabInfo:
    """One lab as `lab_status` sees it."""

    prefix: str
    status: str  # "up", "degraded" (parts missing) or "orphan" (no state file)
    subnet: str | None
    hosts: int  # hosts in the state file (orphans: namespaces found)
    namespaces: int  # namespaces present now
    reflectors: int  # reflector hosts in the state file
    reflectors_alive: int
    owner_pid: int | None
    detached: bool


def is_reflector(pid: int) -> bool:
    """A live lab process (a reflector, or a TCP listener) with this pid."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
        with open(f"/proc/{pid}/stat", "rb") as f:
            zombie = f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return False
    return any(mark in cmd for mark in LAB_PROCESS_MARKS) and not zombie


def stop_reflectors(pids: list[int]) -> tuple[int, ...]:
    """SIGTERM (then SIGKILL) the given pids that are reflectors; returns those stopped."""
    live = [p for p in dict.fromkeys(pids) if is_reflector(p)]
    for pid in live:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_WAIT_S
    while time.monotonic() < deadline and any(is_reflector(p) for p in live):
        time.sleep(0.02)
    for pid in live:
        if is_reflector(pid):
            os.kill(pid, signal.SIGKILL)
    return tuple(live)


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> tuple[int, ...]:
    """Stop reflectors this process started (and reap them, so no zombie is left)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(KILL_WAIT_S)
    return tuple(p.pid for p in procs)


def _reap(
    prefix: str, names_ns: list[str], names_links: list[str], pids: list[int], state_dir: Path
) -> Teardown:
    ours = prefix + "-"
    namespaces = sorted(set(names_ns) | {n for n in list_netns() if n.startswith(ours)})
    for ns in namespaces:
        pids += ns_pids(ns)
    killed = stop_reflectors(pids)
    links: list[str] = []
    with IPRoute() as ipr:
        present = {str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}
        for name in sorted(set(names_links) | {n for n in present if n.startswith(ours)}):
            if delete_link(ipr, name):
                links.append(name)
    removed_ns = [ns for ns in namespaces if delete_netns(ns)]
    tables = [f"{fam} {name}" for fam, name in nft_tables(None) if prefix_of(name) == prefix]
    for t in tables:
        nft(None, ["delete", "table", *t.split()])
    shutil.rmtree(run_dir(prefix, state_dir), ignore_errors=True)
    state_path(prefix, state_dir).unlink(missing_ok=True)
    return Teardown((prefix,), killed, tuple(links), tuple(removed_ns), tuple(tables))


def teardown_state(state: LabState, state_dir: Path = STATE_DIR) -> Teardown:
    """Remove everything a state file lists, plus anything else carrying its prefix."""
    pids = [
        p
        for h in state.hosts
        for p in (h.reflector_pid, h.reflector_pid6, h.listener_pid, h.relay_pid)
        if p
    ]
    return _reap(
        state.prefix,
        [h.netns for h in state.hosts],
        [h.root_ifname for h in state.hosts],
        pids,
        state_dir,
    )


def lab_down(prefix: str, *, state_dir: Path = STATE_DIR) -> Teardown:
    """Take lab `prefix` down: by its state file if there is one, else by names alone."""
    if not ANY_PREFIX_RE.match(prefix):
        raise LabError(f"{prefix!r} is not a lab prefix; see `loadgen lab status` for the labs up")
    path = state_path(prefix, state_dir)
    if path.exists():
        try:
            return teardown_state(load_state(path), state_dir)
        except LabError:
            pass  # unreadable state: the name-based sweep below still finds everything
    return _reap(prefix, [], [], [], state_dir)


def _prefixes_by_name() -> set[str]:
    found = {prefix_of(n) for n in list_netns() if LAB_NAME_RE.match(n)}
    with IPRoute() as ipr:
        found |= {prefix_of(str(li.get_attr("IFLA_IFNAME"))) for li in ipr.get_links()}
    found |= {prefix_of(name) for _, name in nft_tables(None) if LAB_TABLE_RE.match(name)}
    return {p for p in found if p}


def lab_down_all(
    *, state_dir: Path = STATE_DIR, prefix_re: re.Pattern[str] = ANY_PREFIX_RE
) -> Teardown:
    """Take down every lab (state files, then any leftover names) whose prefix matches."""
    done = Teardown()
    prefixes = {p.stem for p in list_states(state_dir)} | _prefixes_by_name()
    for prefix in sorted(prefixes):
        if prefix_re.fullmatch(prefix):
            done += lab_down(prefix, state_dir=state_dir)
    return done


def remains(prefix: str, *, state_dir: Path = STATE_DIR) -> list[str]:
    """What still carries `prefix`: namespaces, root links, root nft tables, reflector
    processes and its state file. Empty once a lab is fully down."""
    ours = prefix + "-"
    found = [f"netns {n}" for n in list_netns() if n.startswith(ours)]
    with IPRoute() as ipr:
        names = sorted(str(li.get_attr("IFLA_IFNAME")) for li in ipr.get_links())
    found += [f"link {n}" for n in names if n.startswith(ours)]
    found += [f"nft table {f} {t}" for f, t in nft_tables(None) if prefix_of(t) == prefix]
    mark = str(run_dir(prefix, state_dir)).encode() + b"/"
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if mark in cmd and is_reflector(pid):
            found.append(f"lab process pid {pid}")
    if state_path(prefix, state_dir).exists():
        found.append(f"state {state_path(prefix, state_dir)}")
    return found


def lab_status(*, state_dir: Path = STATE_DIR) -> list[LabInfo]:
    """Every lab with a state file, and every orphan found by name."""
    present_ns = list_netns()
    infos: list[LabInfo] = []
    for path in list_states(state_dir):
        try:
            st = load_state(path)
        except LabError:
            continue
        n_ns = sum(h.netns in present_ns for h in st.hosts)
        refl = [h for h in st.hosts if h.responder == "reflector"]
        # A host's reflectors: one per IP version (labs from before IPv6 have one).
        pids = [p for h in refl for p in (h.reflector_pid, h.reflector_pid6) if p]
        wanted = sum(1 + bool(h.address6) for h in refl)
        alive = sum(is_reflector(p) for p in pids)
        ok = n_ns == len(st.hosts) and alive == wanted
        infos.append(
            LabInfo(
                st.prefix,
                "up" if ok else "degraded",
                f"{st.subnet} {st.subnet6}".strip(),
                len(st.hosts),
                n_ns,
                wanted,
                alive,
                st.owner_pid,
                st.detached,
            )
        )
    known = {i.prefix for i in infos}
    for prefix in sorted(_prefixes_by_name() - known):
        n_ns = sum(n.startswith(prefix + "-") for n in present_ns)
        infos.append(LabInfo(prefix, "orphan", None, n_ns, n_ns, 0, 0, None, False))
    return infos
