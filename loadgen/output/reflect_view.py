"""What `loadgen reflect` shows: the workers' session rows merged into one table per second
(sender, port, SSID, packets per second, reflected, malformed, refused), the totals line, the
JSONL record of a second and the end summary. Pure: takes what the workers shipped, keeps no
figure of its own beyond the previous second's counts that rates are taken from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rich.table import Table
from rich.text import Text

from loadgen.reflect_core import NO_SSID, TOTALS, row_address

JSONL_SCHEMA = "loadgen-reflect/1"
SHOWN_ROWS = 20  # the live table's busiest sessions; the JSONL has up to MAX_JSONL_ROWS
MAX_JSONL_ROWS = 1000
SessionKey = tuple[str, int, int]


@dataclass(frozen=True, slots=True)
class SessionLine:
    sender: str
    port: int
    ssid: int  # NO_SSID: datagrams too damaged to name one
    pps: float
    reflected: int
    malformed: int
    refused: int
    flagged: int


@dataclass(frozen=True, slots=True)
class ReflectSecond:
    second: int  # since the reflector started
    sessions: tuple[SessionLine, ...]  # busiest first
    totals: dict[str, int]
    pps: float  # reflected per second, all sessions


def merge_rows(snapshots: list[NDArray[np.void]]) -> dict[SessionKey, NDArray[np.int64]]:
    """Rows of every worker summed per (sender, port, SSID): SO_REUSEPORT keeps a flow on one
    worker, but a session whose source port moved could appear on two."""
    merged: dict[SessionKey, NDArray[np.int64]] = {}
    counters = ("reflected", "malformed", "refused", "flagged")
    for rows in snapshots:
        for row in rows:
            key = (row_address(row), int(row["port"]), int(row["ssid"]))
            values = np.array([int(row[c]) for c in counters], np.int64)
            merged[key] = merged.get(key, 0) + values
    return merged


class SecondBuilder:
    """Turns cumulative worker snapshots into per-second views (rates from the last one)."""

    def __init__(self) -> None:
        self._previous: dict[SessionKey, int] = {}

    def build(
        self,
        second: int,
        snapshots: list[NDArray[np.void]],
        totals: list[dict[str, int]],
        span_s: float,
    ) -> ReflectSecond:
        merged = merge_rows(snapshots)
        lines = []
        for key, (reflected, malformed, refused, flagged) in merged.items():
            before = self._previous.get(key, 0)
            pps = max(int(reflected) - before, 0) / span_s if span_s > 0 else 0.0
            lines.append(
                SessionLine(*key, pps, int(reflected), int(malformed), int(refused), int(flagged))
            )
        lines.sort(key=lambda s: (-s.pps, -s.reflected, s.sender, s.port, s.ssid))
        summed = {name: sum(t.get(name, 0) for t in totals) for name in TOTALS}
        pps = sum(line.pps for line in lines)
        self._previous = {key: int(v[0]) for key, v in merged.items()}
        return ReflectSecond(second, tuple(lines), summed, pps)


def _ssid(ssid: int) -> str:
    return "-" if ssid == NO_SSID else f"{ssid:#06x}"


def render(view: ReflectSecond, *, header: str) -> Table:
    table = Table(title=header, title_justify="left", expand=False)
    for name in ("sender", "port", "SSID", "pps", "reflected", "malformed", "refused"):
        table.add_column(name, justify="left" if name == "sender" else "right")
    for line in view.sessions[:SHOWN_ROWS]:
        table.add_row(
            line.sender,
            str(line.port),
            _ssid(line.ssid),
            f"{line.pps:,.0f}",
            f"{line.reflected:,}",
            f"{line.malformed:,}",
            f"{line.refused:,}",
        )
    more = len(view.sessions) - SHOWN_ROWS
    t = view.totals
    table.caption = (
        f"{view.second}s  {view.pps:,.0f} pps  reflected {t['reflected']:,}  malformed "
        f"{t['malformed']:,}  refused {t['refused']:,}  bad sources {t['bad_source']:,}  "
        f"send failed {t['send_failed']:,}  sessions {len(view.sessions)}"
        + (f" ({more} not shown)" if more > 0 else "")
    )
    return table


def plain_line(view: ReflectSecond) -> str:
    t = view.totals
    return (
        f"{view.second:>5}s {view.pps:>10,.0f} pps  sessions {len(view.sessions)}  reflected "
        f"{t['reflected']:,}  malformed {t['malformed']:,}  refused {t['refused']:,}"
    )


def jsonl_record(view: ReflectSecond, unix_s: float) -> dict[str, Any]:
    return {
        "schema": JSONL_SCHEMA,
        "time": round(unix_s, 3),
        "second": view.second,
        "pps": round(view.pps, 1),
        "totals": view.totals,
        "sessions": [
            {
                "sender": s.sender,
                "port": s.port,
                "ssid": None if s.ssid == NO_SSID else s.ssid,
                "pps": round(s.pps, 1),
                "reflected": s.reflected,
                "malformed": s.malformed,
                "refused": s.refused,
                "tlv_flagged": s.flagged,
            }
            for s in view.sessions[:MAX_JSONL_ROWS]
        ],
    }


def summary(view: ReflectSecond, *, elapsed_s: float) -> Text:
    t = view.totals
    senders = len({s.sender for s in view.sessions})
    return Text(
        f"--- loadgen reflect: {elapsed_s:.1f} s, {t['reflected']:,} reflected, "
        f"{t['malformed']:,} malformed, {t['refused']:,} refused, {t['bad_source']:,} from "
        f"sources never answered, {t['send_failed']:,} replies the kernel refused, "
        f"{t['expired']:,} sessions expired; {len(view.sessions)} session(s) from "
        f"{senders} sender(s) live at the end"
    )
