"""Execute experiments/explore.ipynb top to bottom (it writes its own small synthetic runs)."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).parents[1] / "experiments" / "explore.ipynb"


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.append(out.get("data", {}).get("text/plain", ""))
        parts.append(out.get("data", {}).get("text/html", ""))
    return "\n".join(parts)


def test_explore_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("SD_RUN", raising=False)
    monkeypatch.delenv("SD_RUN_B", raising=False)
    monkeypatch.setenv("SD_SYNTHETIC", "1")  # never pick up a local quickstart run
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's synthetic runs go under pytest's temporary folder
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("outputs") is not None for c in code)
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    text = "\n".join(_text(c) for c in code)
    assert "<b>Run</b>" in text  # the run's HTML summary
    assert "RunAnalysis" in text  # the analysis' HTML summary
    images = sum("image/png" in o.get("data", {}) for c in code for o in c.get("outputs", []))
    assert images >= 3  # three figures
    assert "captions lost their top-1 image" in text and "synthetic caption" in text
    assert "rotation_mismatch_mean_deg" in text  # the comparison table
    assert "index.html" in text
