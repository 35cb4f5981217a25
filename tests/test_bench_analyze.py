"""The analyzer benchmark script runs end to end on a tiny run and prints every ratio it promises."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("faiss")


def test_bench_analyze_tiny(tmp_path):
    cmd = [sys.executable, str(ROOT / "experiments" / "bench_analyze.py"), "--n", "400", "--d", "16", "--stages", "3",
           "--threads", "1", "--modes", "baseline", "searches", "exact", "fast", "--workdir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    rows = {m: re.search(rf"^{m}\s+([\d.]+)\s+([\d.]+|-)\s+([\d.]+)", out, re.M) for m in ("baseline", "searches", "exact", "fast")}
    assert all(rows.values()), out
    assert rows["baseline"].group(2) == "1.00"  # the baseline is the unit of the ratio column
    assert rows["searches"].group(2) != "-" and rows["exact"].group(2) != "-"
    assert "against all searches" in out
    # n=400 is below the fast-mode sample sizes, so fast mode is exact here and its intervals must cover everything
    m = re.search(r"covers the exact neighbour overlap in (\d+)/(\d+)", out)
    assert m and m.group(1) == m.group(2) and int(m.group(2)) > 0, out
    # ... and its Procrustes fits and topology use every row, so they equal the exact values
    for metric in ("procrustes_angle_deg", "rigid_share", "topology_change_mean_deg"):
        assert re.search(rf"^  {metric}\s+\d+ cells: largest \|fast - exact\| 0 ", out, re.M), out
