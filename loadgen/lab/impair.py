"""What the reflector does to each echo request: seeded, vectorised decisions. Pure: no I/O.

Every impairment draws from its own generator, exactly one number per valid request, so the
k-th request of a run always gets the same fate for a given seed, however the requests were
batched. Only the ICMP rate limit depends on time (`now_ns` is passed in).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from enum import IntEnum
from typing import Any

import numpy as np
import numpy.typing as npt

# Our probe header (docs/DESIGN.md) follows the 8-byte ICMP header; bit flips go after both.
ICMP_HEADER_LEN = 8
PROBE_HEADER_LEN = 28
FLIP_FROM = ICMP_HEADER_LEN + PROBE_HEADER_LEN


class Action(IntEnum):
    """The one fate of a valid echo request."""

    REPLY = 0
    DROP = 1
    RATE_LIMITED = 2
    UNREACHABLE = 3  # answered with ICMP destination unreachable, code 1 (host unreachable)
    TIME_EXCEEDED = 4  # answered with ICMP time exceeded, code 0 (TTL exceeded in transit)


@dataclass(frozen=True, slots=True)
class ReflectorConfig:
    """Everything a reflector process needs; travels as JSON on its command line."""

    seed: int = 0
    drop: float = 0.0
    drop_every: int = 0
    drop_run: int = 0  # with drop_every N: the last R of every N requests (0: 1)
    delay_ns: int = 0
    jitter_ns: int = 0
    jitter_normal: bool = False  # False: uniform in [-jitter, +jitter]; True: normal, sd jitter
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_hold_ns: int = 200_000_000  # a held reply with no successor goes out alone after this
    bitflip: float = 0.0
    corrupt: float = 0.0
    unreachable: float = 0.0
    time_exceeded: float = 0.0
    ratelimit_pps: int = 0
    ratelimit_burst: int = 0
    control_path: str = ""  # unix SOCK_SEQPACKET path answering "stats" and "stop"
    stats_path: str = ""  # final counters are written here at exit
    die_with_parent: bool = False
    version: int = 4  # the IP version this reflector answers (a host runs one per version)
    address: str = ""  # the host's address of that version (IPv6 errors quote it)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ReflectorConfig:
        raw: dict[str, Any] = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown reflector config keys {sorted(unknown)}")
        return cls(**raw)


@dataclass(frozen=True, slots=True)
class Decisions:
    """Per-request decisions for one batch; arrays are aligned with the batch's valid requests."""

    action: npt.NDArray[np.uint8]
    bitflip: npt.NDArray[np.bool_]  # flip one fill bit (checksum fixed)
    flip_unit: npt.NDArray[np.float64]  # in [0, 1): which fill bit, scaled by the fill length
    corrupt: npt.NDArray[np.bool_]  # break the checksum (only where not bit-flipped)
    duplicate: npt.NDArray[np.bool_]
    reorder: npt.NDArray[np.bool_]
    delay_ns: npt.NDArray[np.int64]


class Decider:
    """Turns a batch of n valid requests into Decisions, keeping the seeded streams in step."""

    STREAMS = ("drop", "error", "bitflip", "flip_unit", "corrupt", "duplicate", "reorder", "delay")

    def __init__(self, cfg: ReflectorConfig, now_ns: int) -> None:
        self.cfg = cfg
        seqs = np.random.SeedSequence(cfg.seed).spawn(len(self.STREAMS))
        self.rng = {
            name: np.random.Generator(np.random.PCG64(s))
            for name, s in zip(self.STREAMS, seqs, strict=True)
        }
        self.seen = 0  # valid requests decided so far
        self.burst = cfg.ratelimit_burst or max(1, cfg.ratelimit_pps // 20)
        self.tokens = float(self.burst)
        self.tokens_ns = now_ns

    def _take_tokens(self, wanted: int, now_ns: int) -> int:
        """Token bucket (RFC 4443 section 2.4 f style): how many of `wanted` answers may go."""
        elapsed_ns = max(0, now_ns - self.tokens_ns)
        self.tokens = min(
            float(self.burst), self.tokens + elapsed_ns * self.cfg.ratelimit_pps / 1e9
        )
        self.tokens_ns = now_ns
        allowed = min(wanted, int(self.tokens))
        self.tokens -= allowed
        return allowed

    def decide(self, n: int, now_ns: int) -> Decisions:
        cfg, rng = self.cfg, self.rng
        draws = {name: rng[name].random(n) for name in self.STREAMS if name != "delay"}
        delay_u = rng["delay"].random((n, 2))  # two per request: Box-Muller needs a pair
        action = np.zeros(n, dtype=np.uint8)
        ordinal = np.arange(self.seen + 1, self.seen + n + 1, dtype=np.int64)
        self.seen += n
        dropped = draws["drop"] < cfg.drop
        if cfg.drop_every > 0:
            run = max(1, cfg.drop_run)
            dropped |= (ordinal - 1) % cfg.drop_every >= cfg.drop_every - run
        action[dropped] = Action.DROP
        if cfg.ratelimit_pps > 0:
            answering = np.flatnonzero(action == Action.REPLY)
            allowed = self._take_tokens(len(answering), now_ns)
            action[answering[allowed:]] = Action.RATE_LIMITED
        live = action == Action.REPLY
        err = draws["error"]
        action[live & (err < cfg.unreachable)] = Action.UNREACHABLE
        te = (err >= cfg.unreachable) & (err < cfg.unreachable + cfg.time_exceeded)
        action[live & te] = Action.TIME_EXCEEDED
        replying = action == Action.REPLY
        bitflip = replying & (draws["bitflip"] < cfg.bitflip)
        delay = np.full(n, cfg.delay_ns, dtype=np.float64)
        if cfg.jitter_ns > 0:
            if cfg.jitter_normal:
                radius = np.sqrt(-2.0 * np.log1p(-delay_u[:, 0]))  # 1 - u is in (0, 1]
                delay += radius * np.cos(2 * np.pi * delay_u[:, 1]) * cfg.jitter_ns
            else:
                delay += (2 * delay_u[:, 0] - 1) * cfg.jitter_ns
        return Decisions(
            action=action,
            bitflip=bitflip,
            flip_unit=draws["flip_unit"],
            corrupt=replying & ~bitflip & (draws["corrupt"] < cfg.corrupt),
            duplicate=replying & (draws["duplicate"] < cfg.duplicate),
            reorder=replying & (draws["reorder"] < cfg.reorder),
            delay_ns=np.maximum(delay, 0).astype(np.int64),
        )


@dataclass(frozen=True, slots=True)
class ReflectorCounts:
    """Exactly what a reflector did, as it reports it (control socket "stats", and at exit)."""

    requests_seen: int = 0  # our probes received (well-formed echo requests with our magic)
    malformed: int = 0  # other datagrams on the raw socket (bad checksum, truncated, ...)
    foreign: int = 0  # echo requests that are not our probes: not answered, in no figure
    dropped: int = 0  # drop / drop_every
    rate_limited: int = 0  # no token in the ICMP rate-limit bucket: not answered
    unreachable_sent: int = 0
    time_exceeded_sent: int = 0
    replies: int = 0  # requests answered with an echo reply (counted once when duplicated)
    replies_sent: int = 0  # echo reply datagrams handed to the kernel, duplicates included
    duplicated: int = 0  # replies sent twice
    bitflipped: int = 0
    bitflip_skipped: int = 0  # picked for a bit flip but with no fill after the probe header
    corrupted: int = 0  # replies sent with a broken checksum (IPv6: held back for good, since
    # the kernel writes ICMPv6 checksums, and the receiver's kernel would drop a bad one unseen)
    reordered: int = 0  # replies held back and sent right after the next reply
    reorder_flushed: int = 0  # held back, but no next reply came within reorder_hold_ns
    out_of_order: int = 0  # replies sent after a reply to a later request (reorder or jitter)
    delayed: int = 0  # replies (and errors) held for a delay > 0
    delay_ns_max: int = 0  # the largest delay drawn
    late_ns_max: int = 0  # the most a delayed message went out after its due time
    late_ns_p50: int = 0  # the median of that lateness (to 10 µs)
    hold_ns_p50: int = 0  # median time an echo reply was held, from its request's arrival (the
    # kernel's receive time) to its sending (to 10 µs): what this host added to the round trip
    hold_step_ns: int = 0  # mean |difference| of consecutive replies' hold times: its jitter
    overhead_ns_p50: int = 0  # median of each reply's hold less the delay drawn for it: the
    # reflector's own part (waiting for a CPU, a late timer), which a busy machine makes longer
    send_errors: int = 0  # datagrams the kernel refused (each also missing from *_sent)
    unsent_at_exit: int = 0  # delayed or held replies still waiting when the reflector stopped
    pending: int = 0  # delayed or held replies waiting now (0 when the reflector is idle)
    socket_drops: int = 0  # datagrams its raw socket's kernel counter says it dropped (a full
    # buffer): with requests_seen, every probe past nftables once the reflector has caught up

    @classmethod
    def from_dict(cls, raw: dict[str, int]) -> ReflectorCounts:
        known = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in raw.items() if k in known})
