"""`loadgen search` from settings to JSON: the [search] keys, flags and presets, the driver (with
a simulated device in place of the runner), the result rows, the JSON document and the plot."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from loadgen.cli import build_parser, main, profile_from_args
from loadgen.coordinator import Display
from loadgen.errors import ProfileError, UsageError
from loadgen.output.searchview import SearchScreen, results_table
from loadgen.profile import Profile, load_profile, parse_profile
from loadgen.search import report
from loadgen.search.driver import Driver, Listener, Measured, TrialRecord, run_trial
from loadgen.search.settings import SearchSettings, parse_search_table, search_settings
from loadgen.stats import Counts, RttStats
from loadgen.units import format_rate

S = 1_000_000_000


def settings_of(**keys: object) -> SearchSettings:
    return search_settings(parse_search_table(keys, "search"), 64)


def test_defaults_presets_and_explicit_keys() -> None:
    s = settings_of(max_rate="40k")
    assert [g.name for g in s.goals] == ["ndr", "pdr:0.5%"]
    assert [g.loss_ratio for g in s.goals] == [0.0, 0.005]
    g = s.goals[0]
    assert (g.final_ns, g.sum_ns, g.exceed_ratio, g.width) == (10 * S, 30 * S, 0.5, 0.005)
    assert (s.min_rate_pps, s.max_rate_pps, s.initial_ns, s.sizes) == (400.0, 40_000.0, S, (64,))
    strict = settings_of(max_rate="40k", preset="rfc2544")
    assert [g.name for g in strict.goals] == ["ndr"]
    assert (strict.goals[0].final_ns, strict.goals[0].exceed_ratio, strict.initial_ns) == (
        60 * S,
        0.0,
        60 * S,
    )
    # an explicit key beats the preset
    assert settings_of(max_rate=1000, preset="quick", width="1%").goals[0].width == 0.01
    assert settings_of(max_rate=1000, sizes="64,512", latency_at="10,50%").latency_at == (10, 50)


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        ({}, "max_rate"),
        ({"max_rate": "1k", "min_rate": "2k"}, "above max_rate"),
        ({"max_rate": "1k", "goals": "ndr, xdr"}, "unknown goal"),
        ({"max_rate": "1k", "exceed": "150%"}, "out of range"),
        ({"max_rate": "1k", "warmup": "1.5s"}, "whole seconds"),
        ({"max_rate": "1k", "trial": "10s", "sum": "5s"}, "shorter than trial"),
        ({"max_rate": "1k", "sizes": "10"}, "out of range"),
        ({"max_rate": "1k", "preset": "fast"}, "unknown preset"),
        ({"max_rate": "1k", "tiral": "1s"}, "unknown key"),
    ],
)
def test_bad_search_keys_get_one_line(keys: dict[str, object], says: str) -> None:
    with pytest.raises(UsageError) as err:
        settings_of(**keys)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_profile_search_table_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('targets = ["127.0.0.1"]\n\n[search]\nmax_rate = "20k"\ntrial = "2s"\n')
    profile = load_profile(str(path))
    assert profile.search == {"max_rate": 20_000.0, "trial": 2 * S}
    bad = tmp_path / "bad.toml"
    bad.write_text('targets = ["127.0.0.1"]\n\n[search]\nmax_rat = "20k"\n')
    with pytest.raises(ProfileError, match="unknown key"):
        load_profile(str(bad))
    args = build_parser().parse_args(["search", "127.0.0.1", "--max-rate", "5k", "--quick"])
    assert (args.search_max_rate, args.search_preset) == ("5k", "quick")
    assert profile_from_args(args).targets == ("127.0.0.1",)


def test_search_refuses_the_flags_it_sets_itself(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", "127.0.0.1", "--max-rate", "5k", "-r", "10k"]) == 2
    assert "unrecognized arguments: -r" in capsys.readouterr().err


class FakeDevice:
    """The runner's stand-in: forwards up to `capacity` pps; cannot generate above `ceiling`."""

    def __init__(self, capacity: float, ceiling: float = float("inf")) -> None:
        self.capacity, self.ceiling = capacity, ceiling
        self.asked: list[tuple[float, int, int, int]] = []

    def __call__(
        self, base: Profile, load: float, duration_ns: int, size: int, warmup: int, shown: Display
    ) -> Measured:
        self.asked.append((load, duration_ns, size, warmup))
        sent = round(min(load, self.ceiling) * duration_ns / S)
        received = min(sent, round(self.capacity * duration_ns / S))
        counts = Counts(sent=sent, received=received, lost=sent - received)
        limits = ("worker 0: sent too few",) if load > self.ceiling else ()
        rtt = RttStats(count=received, min_ns=10_000, p50_ns=20_000, p99_ns=40_000, max_ns=50_000)
        return Measured(counts, sent * S / duration_ns, limits, rtt, 4)


def drive(device: FakeDevice, **keys: object) -> Driver:
    profile = parse_profile({"targets": "127.0.0.1"}, source="t")
    settings = settings_of(pause=0, **keys)
    driver = Driver(profile, settings, Listener(), sleep=lambda s: None, trial=device)
    driver.run()
    return driver


def test_the_driver_searches_every_size_and_repetition_then_latency(tmp_path: Path) -> None:
    device = FakeDevice(12_000)
    driver = drive(
        device, max_rate="20k", preset="quick", sizes="64,512", repeat=2, latency_at="50"
    )
    assert [(r.size, r.repeat) for r in driver.runs] == [(64, 0), (64, 1), (512, 0), (512, 1)]
    rows = report.result_rows(driver.runs, driver.records, 4)
    assert [(r.goal.goal.name, r.size) for r in rows] == [
        ("ndr", 64), ("pdr:0.5%", 64), ("ndr", 512), ("pdr:0.5%", 512),
    ]  # fmt: skip
    for row in rows:
        assert row.rate_pps is not None and abs(row.rate_pps - 12_000) <= 0.02 * 12_000 * 1.006
        assert row.spread_pps == 0.0 and len(row.repeats) == 2
        assert row.bits_per_s == row.rate_pps * report.wire_bits(row.size, 4)
        assert row.latency.p99_ns == 40_000
    latency = [t for t in driver.records if t.kind == "latency"]
    assert len(latency) == 2 * 2 * 2  # sizes x repetitions x goals, one percentage
    assert {(t.size, t.duration_ns) for t in latency} == {(64, S), (512, S)}
    assert all(size in (64, 512) for _, _, size, _ in device.asked)
    doc = report.document(driver.settings, ["127.0.0.1"], rows, driver.records, interrupted=False)
    path = tmp_path / "s.json"
    report.write_json(str(path), doc)
    back = json.loads(path.read_text())
    assert back["v"] == report.SCHEMA_VERSION and len(back["trials"]) == len(driver.records)
    need = {"goal", "loss_ratio", "size", "rate_pps", "lower_pps", "upper_pps", "generator_limited"}
    assert need <= set(back["results"][0])
    trial_keys = {"intended_pps", "achieved_pps", "duration_s", "sent", "received", "late"}
    trial_keys |= {"lost", "loss_ratio", "verdicts", "generator"}
    assert trial_keys <= set(back["trials"][0])
    assert back["results"][0]["latency_at"][0]["load_pps"] == pytest.approx(
        0.5 * back["results"][0]["lower_pps"]
    )
    png = tmp_path / "s.png"
    why_not = report.write_plot(str(png), rows, driver.records)
    assert why_not is None and png.read_bytes().startswith(b"\x89PNG")


def test_the_driver_reports_at_least_when_the_generator_is_the_limit() -> None:
    device = FakeDevice(50_000, ceiling=10_000)
    driver = drive(device, max_rate="40k", preset="quick", goals="ndr")
    (row,) = report.result_rows(driver.runs, driver.records, 4)
    assert row.goal.generator_limited and row.goal.upper_pps is None
    assert row.rate_pps is not None and row.rate_pps <= 10_000
    assert row.label == f"at least {row.rate_pps:,.0f} pps (generator limit)"
    invalid = [t for t in driver.records if not t.measured.valid]
    assert invalid and all(dict(t.verdicts)["ndr"] == "invalid" for t in invalid)


def test_a_trial_record_counts_errors_as_lost() -> None:
    counts = Counts(sent=100, received=90, lost=6, errored=4)
    m = Measured(counts, 100.0, (), RttStats(), 4)
    t = TrialRecord(0, "search", 64, 0, "ndr", 0, 100.0, S, 0, m, 0, ())
    assert (t.measured.lost, t.measured.loss_ratio, t.measured.valid) == (10, 0.1, True)
    assert (m.verdict(0.0), m.verdict(0.1)) == ("high-loss", "low-loss")


@pytest.mark.root
def test_a_trial_on_loopback_counts_only_the_seconds_after_the_warmup() -> None:
    profile = parse_profile(
        {"targets": "127.0.0.1", "workers": 1, "timeout": "300ms", "delay": "300ms"}, source="t"
    )
    got = run_trial(profile, 500.0, S, 64, S, Display())
    counts, achieved, limits, rtt = got.counts, got.achieved_pps, got.limits, got.rtt
    assert got.family == 4
    # The second second only: the warmup's 500 are not counted (probes are counted in the
    # second they were sent in, so a busy moment at the boundary may move a few across it).
    assert abs(counts.sent - 500) <= 5 or limits, (counts, limits)
    assert counts.unaccounted == 0 and achieved == counts.sent
    if not limits:  # the machine kept up: loopback answers every probe
        assert counts.lost == 0
        assert rtt.count == 2 * counts.received  # RTTs cover the whole trial, warmup too


def test_the_screen_shows_bounds_and_the_results_table() -> None:
    console = Console(width=80, record=True, file=io.StringIO())
    device = FakeDevice(12_000)
    screen = SearchScreen(plain=False, console=console)
    profile = parse_profile({"targets": "127.0.0.1"}, source="t")
    settings = settings_of(pause=0, max_rate="20k", preset="quick", goals="ndr")
    driver = Driver(profile, settings, screen, sleep=lambda s: None, trial=device)
    driver.run()
    screen.close()
    (row,) = report.result_rows(driver.runs, driver.records, 4)
    console.print(results_table([row]))
    text = console.export_text()
    assert row.rate_pps is not None
    shown = format_rate(row.rate_pps).removesuffix(" pps")
    assert re.search(rf"^ ndr +64 B +{re.escape(shown)} ", text, re.M), text
    assert "trials" in text and "lower-upper" in text
    assert all(len(line) <= 80 for line in text.splitlines())


@pytest.mark.root
def test_the_command_on_loopback_writes_the_json_and_the_plot(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    argv = ["search", "127.0.0.1", "--quick", "--max-rate", "2k", "--goal", "ndr"]
    argv += ["--workers", "1", "-d", "300ms", "-w", "300ms", "--plain", "--output", str(out)]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    (result,) = doc["results"]
    first = doc["trials"][0]
    assert first["intended_pps"] == 2000 and first["duration_s"] == 1.0
    if first["valid"]:  # loopback carries 2k pps: the maximum itself is the result
        assert (result["rate_pps"], result["upper_pps"]) == (2000, None)
    assert (tmp_path / "s.png").read_bytes().startswith(b"\x89PNG")
