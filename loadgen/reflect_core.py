"""The STAMP reflector's decisions, sans-IO: who is answered (`--allow`, sources that must never
get a reply, a per-sender token bucket), the session table (sender address, port, SSID) with
its stateful sequence (RFC 8762 4.3) and counters, expiry of idle sessions and a bound on their
number. Rule: every received datagram lands in exactly one counter of one row (reflected,
malformed or refused). Takes `now_ns` (monotonic), never reads a clock; rows ship as
`SESSION_DTYPE` arrays.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from loadgen.wire.stamp import STAMP_PORT, Reflection, ReflectorClock, ReflectStatus, reflect

NO_SSID = 0x1_0000  # a row of datagrams too damaged to name a session
DEFAULT_MAX_RATE_PPS = 200_000  # per sender address and worker: generous, never unbounded
DEFAULT_IDLE_NS = 60 * 1_000_000_000  # a session silent this long is forgotten
DEFAULT_MAX_SESSIONS = 65_536  # per worker: with the oldest evicted, memory stays bounded
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# One row per (sender, port, SSID) a worker has seen; counters are cumulative for the session.
SESSION_DTYPE = np.dtype(
    [
        ("addr", "S16"),  # sender address, 4 or 16 bytes (an IPv4 one zero-padded)
        ("family", "u1"),  # 4 or 6
        ("port", "<u2"),
        ("ssid", "<u4"),  # NO_SSID for the malformed row of a sender
        ("reflected", "<u8"),
        ("malformed", "<u8"),  # truncated, oversized, authenticated mode: dropped
        ("refused", "<u8"),  # not allowed, over the rate cap: dropped
        ("flagged", "<u8"),  # reflected with a TLV flagged unknown or malformed (RFC 8972 4)
    ]
)


# What a worker has done since it started, whatever sessions expired since.
TOTALS = ("reflected", "malformed", "refused", "flagged", "bad_source", "expired", "send_failed")


class Verdict(IntEnum):
    ANSWER = 0
    NOT_ALLOWED = 1  # outside --allow
    RATE_CAPPED = 2  # over --max-rate-per-sender
    BAD_SOURCE = 3  # multicast, broadcast, unspecified or port 0: a reply could hit many or none


def parse_allow(text: str | None) -> tuple[Network, ...]:
    """`--allow 198.18.0.0/15,::1` as networks; None or empty: everyone."""
    if not text:
        return ()
    try:
        return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(","))
    except ValueError as exc:
        raise ValueError(
            f"--allow: {exc}: give a comma list of CIDRs like 198.18.0.0/15,::1"
        ) from None


def bad_source(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bool:
    """Sources a reply must never go to: port 0 (no one listens), multicast, the limited
    broadcast, the unspecified address and IPv4's reserved 240/4 (a spoofed victim set)."""
    if port == 0 or addr.is_multicast or addr.is_unspecified:
        return True
    return isinstance(addr, ipaddress.IPv4Address) and int(addr) >= 0xF000_0000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at_ns: int


@dataclass(slots=True)
class _Session:
    last_ns: int
    next_seq: int = 0
    counts: list[int] = field(default_factory=lambda: [0, 0, 0, 0])  # as _COUNTERS


_COUNTERS = ("reflected", "malformed", "refused", "flagged")
_REFLECTED, _MALFORMED, _REFUSED, _FLAGGED = range(4)
_MAX_KNOWN_SOURCES = 65_536  # cached source verdicts; the cache is emptied when full


@dataclass(frozen=True, slots=True)
class ReflectorConfig:
    allow: tuple[Network, ...] = ()
    max_rate_pps: float = DEFAULT_MAX_RATE_PPS
    stateful: bool = False
    idle_ns: int = DEFAULT_IDLE_NS
    max_sessions: int = DEFAULT_MAX_SESSIONS
    port: int = STAMP_PORT
    clock: ReflectorClock = field(default_factory=ReflectorClock)
    # The DSCP1 values a reply may carry (RFC 8972 4.4 local policy); None: every one.
    permitted_dscp: frozenset[int] | None = None


class Reflector:
    """One worker's reflector state: decide, reflect, count."""

    def __init__(self, config: ReflectorConfig) -> None:
        self.config = config
        self._sessions: dict[tuple[bytes, int, int], _Session] = {}
        self._buckets: dict[bytes, _Bucket] = {}
        # What the source address and port alone decide (bad source, --allow), per source.
        self._sources: dict[tuple[bytes, int], Verdict] = {}
        # Cumulative over every session ever seen, expired ones included.
        self.totals = dict.fromkeys(TOTALS, 0)
        self._burst = max(config.max_rate_pps / 10.0, 64.0)

    def _source_verdict(self, addr: bytes, port: int) -> Verdict:
        ip = ipaddress.ip_address(addr)
        if bad_source(ip, port):
            return Verdict.BAD_SOURCE
        if self.config.allow and not any(ip in net for net in self.config.allow):
            return Verdict.NOT_ALLOWED
        return Verdict.ANSWER

    def verdict(self, addr: bytes, port: int, now_ns: int) -> Verdict:
        known = self._known_source(addr, port)
        if known is not Verdict.ANSWER:
            return known
        return Verdict.ANSWER if self._take_tokens(addr, 1, now_ns) else Verdict.RATE_CAPPED

    def _known_source(self, addr: bytes, port: int) -> Verdict:
        key = (addr, port)
        known = self._sources.get(key)
        if known is None:
            if len(self._sources) >= _MAX_KNOWN_SOURCES:
                self._sources.clear()
            known = self._sources[key] = self._source_verdict(addr, port)
        return known

    def _take_tokens(self, addr: bytes, count: int, now_ns: int) -> int:
        """How many of `count` datagrams from addr at now_ns the token bucket lets through:
        as many as one at a time would (the refill is the same for all: the same now_ns)."""
        bucket = self._buckets.get(addr)
        if bucket is None:
            bucket = self._buckets[addr] = _Bucket(self._burst, now_ns)
        elapsed_s = max(now_ns - bucket.at_ns, 0) / 1e9
        bucket.tokens = min(self._burst, bucket.tokens + elapsed_s * self.config.max_rate_pps)
        bucket.at_ns = now_ns
        taken = min(count, int(bucket.tokens)) if bucket.tokens >= 1.0 else 0
        bucket.tokens -= taken
        return taken

    def decide_batch(
        self,
        addr: NDArray[np.uint8],
        port: NDArray[np.int64],
        ssid: NDArray[np.int64],
        now_ns: int,
    ) -> tuple[NDArray[np.bool_], NDArray[np.int64] | None]:
        """`handle`'s decisions and counts for a batch of datagrams that all reflect (plain
        test packets: `stamp_reflect.plain_rows`), per (sender, port, SSID) group rather than
        per datagram: which rows are answered and, stateful, the sequence number of each
        answered row in row order (None: stateless). addr is (rows, 4 or 16) bytes."""
        n, width = addr.shape
        if _uniform(addr) and _uniform(port) and _uniform(ssid):
            return self._decide_one(bytes(addr[0]), int(port[0]), int(ssid[0]), n, now_ns)
        key = np.empty((n, width + 4), np.uint8)
        key[:, :width] = addr
        key[:, width : width + 2] = port.astype(">u2").view(np.uint8).reshape(n, 2)
        key[:, width + 2 :] = ssid.astype(">u2").view(np.uint8).reshape(n, 2)
        flat = key.view(np.dtype((np.void, width + 4)))[:, 0]
        _, first, group = np.unique(flat, return_index=True, return_inverse=True)
        order = np.argsort(first)  # groups in order of first appearance, as one at a time
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        first, group = first[order], rank[group.reshape(-1)]
        names = [(bytes(addr[r]), int(port[r]), int(ssid[r])) for r in first.tolist()]
        verdicts = [self._known_source(a, p) for a, p, _ in names]
        answered = np.zeros(n, np.bool_)
        answering = [g for g, v in enumerate(verdicts) if v is Verdict.ANSWER]
        for a in dict.fromkeys(names[g][0] for g in answering):  # one bucket per address
            mine = [g for g in answering if names[g][0] == a]
            rows = np.flatnonzero(np.isin(group, mine))
            answered[rows[: self._take_tokens(a, len(rows), now_ns)]] = True
        seq = np.zeros(n, np.int64) if self.config.stateful else None
        for g, ((a, p, s), verdict) in enumerate(zip(names, verdicts, strict=True)):
            rows = np.flatnonzero(group == g)
            if verdict is Verdict.BAD_SOURCE:
                self.totals["bad_source"] += len(rows)
                continue
            session = self._session(a, p, s, now_ns)
            took = rows[answered[rows]]
            self._add(session, _REFUSED, len(rows) - len(took))
            self._add(session, _REFLECTED, len(took))
            if seq is not None:
                seq[took] = session.next_seq + np.arange(len(took))
            session.next_seq += len(took)
        return answered, None if seq is None else seq[answered]

    def _decide_one(
        self, addr: bytes, port: int, ssid: int, n: int, now_ns: int
    ) -> tuple[NDArray[np.bool_], NDArray[np.int64] | None]:
        """decide_batch of n datagrams of one session: the first ones the bucket lets through
        are answered, the rest refused."""
        answered = np.zeros(n, np.bool_)
        verdict = self._known_source(addr, port)
        if verdict is Verdict.BAD_SOURCE:
            self.totals["bad_source"] += n
            return answered, None if not self.config.stateful else np.zeros(0, np.int64)
        took = self._take_tokens(addr, n, now_ns) if verdict is Verdict.ANSWER else 0
        session = self._session(addr, port, ssid, now_ns)
        self._add(session, _REFUSED, n - took)
        self._add(session, _REFLECTED, took)
        answered[:took] = True
        seq = None
        if self.config.stateful:
            seq = np.arange(session.next_seq, session.next_seq + took, dtype=np.int64)
        session.next_seq += took
        return answered, seq

    def handle(
        self,
        data: bytes,
        addr: bytes,
        port: int,
        *,
        rx_ns: int,
        tx_ns: int,
        ttl: int,
        tos: int,
        now_ns: int,
    ) -> Reflection | None:
        """The reply to one datagram from (addr, port) (its bytes and the TOS to send it
        with), or None; counted either way. rx_ns and tx_ns are CLOCK_REALTIME (T2, T3); tos
        is what the datagram arrived with; now_ns is the monotonic clock of expiry."""
        ssid = int.from_bytes(data[14:16], "big") if len(data) >= 16 else NO_SSID
        verdict = self.verdict(addr, port, now_ns)
        if verdict is Verdict.BAD_SOURCE:
            self.totals["bad_source"] += 1
            return None  # not even a session row: a spoofer must not grow the table
        session = self._session(addr, port, ssid, now_ns)
        if verdict is not Verdict.ANSWER:
            self._count(session, _REFUSED)
            return None
        seq = session.next_seq if self.config.stateful else None
        out = reflect(
            data,
            rx_ns=rx_ns,
            tx_ns=tx_ns,
            ttl=ttl,
            tos=tos,
            clock=self.config.clock,
            reflector_seq=seq,
            permitted_dscp=self.config.permitted_dscp,
        )
        if out.status is not ReflectStatus.REFLECTED:
            self._count(session, _MALFORMED)
            return None
        session.next_seq += 1
        self._count(session, _REFLECTED)
        if out.refused_tlvs:
            self._count(session, _FLAGGED)
        return out

    def _count(self, session: _Session, which: int) -> None:
        session.counts[which] += 1
        self.totals[_COUNTERS[which]] += 1

    def _add(self, session: _Session, which: int, count: int) -> None:
        session.counts[which] += count
        self.totals[_COUNTERS[which]] += count

    def malformed(self, addr: bytes, port: int, now_ns: int) -> None:
        """Count a datagram the socket layer could not hand over whole (oversized)."""
        if self.verdict(addr, port, now_ns) is Verdict.BAD_SOURCE:
            self.totals["bad_source"] += 1
            return
        self._count(self._session(addr, port, NO_SSID, now_ns), _MALFORMED)

    def expire(self, now_ns: int) -> int:
        """Forget sessions idle for `idle_ns` and idle rate buckets."""
        idle = [k for k, s in self._sessions.items() if now_ns - s.last_ns >= self.config.idle_ns]
        for key in idle:
            del self._sessions[key]
        cutoff = now_ns - self.config.idle_ns
        for addr in [a for a, b in self._buckets.items() if b.at_ns <= cutoff]:
            del self._buckets[addr]
        self.totals["expired"] += len(idle)
        return len(idle)

    def snapshot(self) -> NDArray[np.void]:
        """The live sessions as SESSION_DTYPE rows (built on demand: shipping, not per packet)."""
        rows = np.zeros(len(self._sessions), SESSION_DTYPE)
        for i, ((addr, port, ssid), s) in enumerate(self._sessions.items()):
            rows[i] = (addr, 4 if len(addr) == 4 else 6, port, ssid, *s.counts)
        return rows

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def _session(self, addr: bytes, port: int, ssid: int, now_ns: int) -> _Session:
        key = (addr, port, ssid)
        session = self._sessions.get(key)
        if session is None:
            if len(self._sessions) >= self.config.max_sessions:
                oldest = min(self._sessions, key=lambda k: self._sessions[k].last_ns)
                del self._sessions[oldest]
                self.totals["expired"] += 1
            session = self._sessions[key] = _Session(now_ns)
        session.last_ns = now_ns
        return session


def _uniform(column: NDArray[Any]) -> bool:
    """Every row of a column equal (compared as bytes: one numpy call, not three)."""
    raw = column.tobytes()
    return raw == raw[: len(raw) // len(column)] * len(column)


def row_address(row: np.void) -> str:
    raw = bytes(row["addr"])
    raw = raw.ljust(16, b"\0")[:4] if int(row["family"]) == 4 else raw.ljust(16, b"\0")
    return str(ipaddress.ip_address(raw))
