"""Open the report in headless Chromium: the page renders from disk and every figure loads."""

import re
import shutil
import subprocess

import pytest

from spatial_disorder.analysis import analyze_run
from spatial_disorder.report import make_report
from spatial_disorder.run import open_run
from spatial_disorder.synthetic import make_synthetic_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--window-size=1200,3000"]

# Injected into a copy of the page only: counts the images that decoded and writes the result into the DOM.
PROBE = (
    "<script>window.addEventListener('load',function(){var im=Array.prototype.slice.call(document.images);"
    "var ok=im.filter(function(i){return i.complete&&i.naturalWidth>0;}).length;"
    "var p=document.createElement('p');p.id='probe-result';p.textContent='images '+im.length+' loaded '+ok;"
    "document.body.appendChild(p);});</script>"
)


def chromium(tmp_path, *args, timeout=120):
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    run = open_run(make_synthetic_run(root / "run", n_images=60, stages=3, d=16, noise=0.2, text_rotation_deg=(14.0, 2.0)))
    out = make_report(analyze_run(run), run).write(root / "report")
    return out


def test_every_figure_loads(report_dir, tmp_path):
    html = (report_dir / "index.html").read_text()
    n_figures = html.count("<img ")
    assert n_figures >= 8
    # the page itself forbids scripts; the probe copy allows only the inline probe (images still data: only)
    probe = html.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';").replace("</body>", PROBE + "</body>")
    page = tmp_path / "probe.html"
    page.write_text(probe)
    done = chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", page.as_uri())
    m = re.search(r"images (\d+) loaded (\d+)", done.stdout)
    assert m, f"probe did not run; chromium said: {done.stderr[-500:]}"
    assert int(m.group(1)) == n_figures and int(m.group(2)) == n_figures


def test_screenshot_of_the_report(report_dir, tmp_path):
    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", (report_dir / "index.html").as_uri())
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1200, 3000)
