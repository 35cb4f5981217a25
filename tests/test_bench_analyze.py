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


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_analyze", ROOT / "experiments" / "bench_analyze.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_repeated_rounds_report_each_modes_median_round_and_the_per_round_ratios(capsys):
    bench = _bench_module()
    walls = {"exact": [5.0, 4.0, 6.0, 5.5], "e2e": [8.0, 8.0, 12.0, 9.9]}  # ratios 1.6, 2.0, 2.0, 1.8
    rounds = [{m: {"seconds": walls[m][r], "round": r} for m in walls} for r in range(4)]
    assert bench.median_round(rounds, "exact")["round"] == 0  # 4.0, 5.0 | 5.5, 6.0: the lower middle
    assert bench.median_round(rounds[:3], "e2e")["round"] in (0, 1)  # 8.0, 8.0, 12.0
    assert bench.median_round(rounds[:3], "exact")["round"] == 0  # 4.0, 5.0, 6.0
    bench.print_rounds(rounds, ["exact", "e2e"])
    out = capsys.readouterr().out
    assert "e2e        / analyze_run per round 1.60, 1.80, 2.00, 2.00; median 1.90" in out
    assert "exact      wall s 5.0, 4.0, 6.0, 5.5" in out


def test_bench_figures_times_every_figure_of_every_probe_set(tmp_path, capsys):
    import importlib.util

    from spatial_disorder.report import render

    bench = _bench_module()
    run = bench.make_run(tmp_path / "run", 60, 8, 3, captions=2, n_probes=2)
    spec = importlib.util.spec_from_file_location("bench_figures", ROOT / "experiments" / "bench_figures.py")
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    assert figures.main([str(run), "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^(\w+)\s+([\d.]+)\s+(\d+)$", out, re.M)
    assert len(rows) == len(render.FIGURES)  # every figure has data on this run
    assert all(float(cpu) > 0 and int(draws) == 2 * 2 for _, cpu, draws in rows)  # 2 probe sets x 2 rounds
    total = re.search(r"one report's (\d+) figures: ([\d.]+) CPU s", out)
    assert total and int(total.group(1)) == 2 * len(render.FIGURES)
