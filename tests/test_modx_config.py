"""Config loading: defaults, YAML/TOML files, dotted overrides, validation errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

yaml = pytest.importorskip("yaml")

from modx.config import load_config, parse_override, pieces_for  # noqa: E402
from modx.errors import ConfigError  # noqa: E402

BASE = {
    "datasets": {"d": {"path": "x.csv"}},
    "phases": {"dataset": "d", "random_slices": 2},
    "probes": [{"name": "p", "dataset": "d"}],
}


def test_yaml_and_toml_with_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**BASE, "train": {"lr": 0.001, "mode": "modx"}}))
    cfg = load_config(tmp_path / "c.yaml", ["train.lr=1e-4", "loss.modx.alpha=5", "model.augment=true", "datasets.d.sep=;"])
    assert cfg["train"]["lr"] == 1e-4 and cfg["loss"]["modx"]["alpha"] == 5 and cfg["model"]["augment"] is True
    assert cfg["datasets"]["d"] == {"path": "x.csv", "format": "csv", "sep": ";"}
    assert cfg["train"]["batch_size"] == 32  # default kept
    assert pieces_for(cfg) == ["clip", "modx"]
    (tmp_path / "c.toml").write_text(
        'output = "r"\n[datasets.d]\npath = "x.tsv"\n[phases]\ndataset = "d"\nsplit_by = "style"\n[[probes]]\nname = "p"\n[train]\nmode = "joint"\n'
    )
    cfg = load_config(tmp_path / "c.toml")
    assert cfg["datasets"]["d"]["format"] == "tsv" and cfg["train"]["mode"] == "joint" and pieces_for(cfg) == ["clip"]


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["train.lrr=1"], "unknown config key 'train.lrr'"),
        (["train.mode=distill"], "train.mode must be one of"),
        (["train.batch_size=1"], "train.batch_size must be an integer >= 2"),
        (["loss.modx.reduction=max"], "reduction must be 'sum' or 'mean'"),
        (["loss.modx.temperature=0"], "temperature must be > 0"),
        (["train.pieces=[clip, lwf]"], "unknown loss piece 'lwf'"),
        (["nonsense"], "not of the form key=value"),
    ],
)
def test_bad_overrides_give_one_line_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(data=BASE, overrides=overrides)


def test_parse_override_types():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=5e-4") == (["a"], 5e-4)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=google") == (["a"], "google")


def test_cli_reports_config_errors_in_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    out = subprocess.run([sys.executable, "-m", "modx.cli", "--config", str(tmp_path / "bad.yaml")], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1 and "cannot parse config" in out.stderr


def test_import_modx_is_cheap():
    code = "import sys, modx, modx.config, modx.errors, modx.cli; print(any(m in sys.modules for m in ('torch', 'open_clip')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_shipped_configs_resolve_and_variants_extend_their_base():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "experiments" / "configs"
    files = sorted(root.glob("*.yaml"))
    assert len(files) >= 8
    modes = {}
    for f in files:
        cfg = load_config(f)
        modes[f.stem] = (cfg["model"]["name"], cfg["train"]["mode"])
    assert modes["paper_vitb32_joint"] == ("ViT-B-32", "joint") and modes["paper_rn50_modx"] == ("RN50", "modx")
    paper = load_config(root / "paper_vitb32_finetune.yaml")
    assert paper["train"]["batch_size"] == 280 and paper["train"]["lr"] == 5e-4 and paper["train"]["epochs"] == 35
    assert paper["train"]["warmup"] == 0.2 and paper["phases"]["random_slices"] == 5 and paper["loss"]["modx"]["alpha"] == 20
