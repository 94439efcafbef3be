"""The report opened in a real headless browser (Debian's chromium, driven by selenium through
the system chromedriver, offline): it loads with no console errors and every figure renders
at a non-zero size. Skipped only where no chromium can be installed (scripts/sysdeps.sh)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from loadgen.bench.synthrun import write_run
from loadgen.output.htmlreport import PANEL_IDS, write_report

pytestmark = pytest.mark.timeout(120)

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    if CHROMIUM is None or DRIVER is None:
        pytest.skip(
            "no chromium/chromedriver on this machine: `bash scripts/sysdeps.sh` installs "
            "Debian's chromium and chromium-driver (needs root and apt)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_the_report_renders_in_chromium_without_errors(
    browser: webdriver.Chrome, tmp_path: Path
) -> None:
    src, out = tmp_path / "run.jsonl", tmp_path / "run.html"
    write_run(src, targets=10, seconds=20)
    write_report(str(src), str(out), worst=3, compare=[str(src)])
    browser.get(out.as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    sizes = browser.execute_script(
        "return Array.from(document.images).map(i => [i.id, i.complete, i.naturalWidth,"
        " i.getBoundingClientRect().width, i.getBoundingClientRect().height]);"
    )
    shown = {s[0] for s in sizes}
    assert {f"fig-{p}" for p in PANEL_IDS} | {"fig-compare", "fig-smoke-3"} <= shown
    for ident, complete, natural, width, height in sizes:
        assert complete and natural > 0 and width > 0 and height > 0, ident
    table = browser.execute_script("return document.getElementById('targets').rows.length")
    assert table == 11  # a heading and 10 targets
    log = browser.get_log("browser")  # type: ignore[no-untyped-call]  # selenium leaves it bare
    errors = [e for e in log if e["level"] in ("SEVERE", "WARNING")]
    assert not errors, errors
    browser.save_screenshot(str(tmp_path / "report.png"))
