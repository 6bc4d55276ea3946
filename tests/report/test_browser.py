"""A real browser opens report.html offline: the screenshot shows the plots and the DOM holds their elements.

Headless Chromium (Debian's ``chromium``, installed by ``.ci/run``); skipped with a reason when it is
absent, a failure when ``CI`` is set.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from dac_search.report import write_reports
from tests.conftest import require

pytestmark = pytest.mark.browser

WIDTH, HEIGHT = 1280, 2000
RED = (0xC8, 0x37, 0x4A)  # the Pareto points and the hypervolume curve (plots.RED)
BLUE = (0x2E, 0x78, 0xA8)  # the uniform-rank line and the DAC cells (plots.BLUE)


def chromium(tmp_path: Path, *args: str) -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    require(binary is not None, "chromium is not installed (apt-get install chromium); the browser check needs it")
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    profile.mkdir()
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # the report must not need the network
    ]
    done = subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def count_near(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 24) -> int:
    return sum(
        n for n, pixel in image.getcolors(WIDTH * HEIGHT)  # type: ignore[union-attr]
        if all(abs(a - b) <= tolerance for a, b in zip(pixel, colour))
    )


def test_screenshot_shows_the_plots(rendered: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}", (rendered / "report.html").as_uri())
    with Image.open(shot) as loaded:
        image = loaded.convert("RGB")
    assert image.size == (WIDTH, HEIGHT)
    assert len(image.getcolors(WIDTH * HEIGHT) or ()) > 200  # text, markers and lines, not a blank page
    assert max(ImageStat.Stat(image).stddev) > 20
    assert count_near(image, RED) > 300, "no Pareto points or hypervolume curve drawn"
    assert count_near(image, BLUE) > 300, "no uniform-rank line or DAC cells drawn"


def test_dom_holds_the_plot_elements(rendered: Path, tmp_path: Path) -> None:
    dom = chromium(tmp_path, "--dump-dom", (rendered / "report.html").as_uri())
    for plot in ("plot-pareto-latency", "plot-pareto-flops", "plot-hypervolume", "plot-layers"):
        assert f'<svg id="{plot}"' in dom
    for element in ('id="plot-pareto-latency-pareto"', 'id="plot-pareto-latency-budget"',
                    'id="plot-hypervolume-curve"', 'id="plot-layers-cells"', '<table id="pareto-table">'):
        assert element in dom
    assert dom.count("<path") > 100
    assert 'id="partial-banner"' not in dom


def test_partial_banner_is_in_the_page(partial_dir: Path, tmp_path: Path) -> None:
    dom = chromium(tmp_path, "--dump-dom", write_reports(partial_dir)[0].as_uri())
    assert 'id="partial-banner"' in dom and "Partial run" in dom
    assert '<svg id="plot-pareto-latency"' in dom
