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


@pytest.mark.parametrize(
    "section, typo",
    [
        ({"stage0": {"dataset": "d", "learning_rate": 1e-3}}, "stage0.learning_rate"),
        ({"datasets": {"d": {"path": "x.csv"}, "mine": {"path": "y.csv", "caption_kye": "title"}}}, "datasets.mine.caption_kye"),
        ({"probes": [{"name": "p", "dataset": "d"}, {"name": "q", "dataset": "d", "sampel": 50}]}, "probes[1].sampel"),
        ({"phases": {"dataset": "d", "wher": {"style": "twitter"}, "random_slices": 2}}, "phases.wher"),
        ({"phases": {"list": [{"dataset": "d"}, {"dataset": "d", "wher": {"style": "a"}}]}}, "phases.list[1].wher"),
        ({"datasets": {"d": {"path": "c.json", "format": "coco", "img_key": "x"}}}, "datasets.d.img_key"),
    ],
)
def test_cli_unknown_keys_in_every_section_name_file_and_full_path(tmp_path, section, typo):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**BASE, **section}))
    out = subprocess.run([sys.executable, "-m", "modx.cli", "--config", "c.yaml", "--print-config"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith(f"error: c.yaml: unknown config key '{typo}'") and out.stderr.count("\n") == 1


def test_known_keys_of_every_section_are_accepted():
    cfg = load_config(data={
        "datasets": {"d": {"path": "x.csv", "img_key": "f", "caption_key": "t", "sep": ",", "image_id_key": "i", "root": "."},
                     "w": {"path": "s-{000..001}.tar", "caption_key": "c"}, "k": {"path": "k.json", "format": "karpathy", "image_root": "."}},
        "stage0": {"dataset": "d", "where": {"a": 1}, "name": "s0", "epochs": 1, "lr": 1e-3, "batch_size": 4, "warmup": 0, "weight_decay": 0},
        "phases": {"dataset": "d", "where": {"a": 2}, "split_by": "style", "order": ["x"]},
        "probes": [{"name": "p", "dataset": "d", "where": {"a": 3}, "sample": 5, "seed": 1, "domain": "x"}],
    })
    assert cfg["stage0"]["name"] == "s0" and cfg["datasets"]["w"]["format"] == "wds"


def test_resume_changes_names_changed_keys_and_ignores_safe_ones():
    from modx.config import RESUME_SAFE_KEYS, resume_changes

    saved = load_config(data=BASE, overrides=["train.mode=modx"])
    same = load_config(data=BASE, overrides=["train.mode=modx", "train.progress=false", "train.num_workers=2", "output=elsewhere"])
    assert {"output", "train.progress", "train.num_workers", "logging"} == set(RESUME_SAFE_KEYS)
    assert resume_changes(saved, same) == []
    changed = load_config(data=BASE, overrides=["train.mode=finetune", "train.lr=5e-4", "train.epochs=2", "loss.modx.alpha=1"])
    assert resume_changes(saved, changed) == ["loss.modx.alpha", "train.epochs", "train.mode"]  # lr 5e-4 is the default
    assert resume_changes({"a": {"b": [1, 2]}}, {"a": {"b": [1, 2], "c": None}}) == ["a.c"]


def test_cli_overrides_anywhere_on_the_command_line(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(BASE))
    cmd = [sys.executable, "-m", "modx.cli", "--config", "c.yaml", "train.mode=modx", "--no-progress", "output=DIR",
           "--print-config", "train.lr=1e-4"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["train"]["mode"] == "modx" and cfg["output"] == "DIR" and cfg["train"]["lr"] == 1e-4


def test_shipped_configs_point_at_the_benchmark_folder():
    from pathlib import Path

    from modx.benchmarks.emoji import DATASET_NAME

    root = Path(__file__).resolve().parents[1] / "experiments" / "configs"
    for f in sorted(root.glob("*.yaml")):
        text = f.read_text()
        for hint in [w for w in text.split() if "$SD_DATA/" in w]:
            assert f"$SD_DATA/{DATASET_NAME}/captions.csv" in hint, (f.name, hint)
        cfg = load_config(f)
        if "emoji" in cfg["datasets"] and "extends" not in text:
            assert f"{DATASET_NAME}/captions.csv" in cfg["datasets"]["emoji"]["path"], f.name


@pytest.mark.parametrize(
    "section, message",
    [
        ({"train": {"log_every": "often"}}, "train.log_every must be an integer >= 0, not 'often'"),
        ({"model": {"augment": "yes"}}, "model.augment must be true or false, not 'yes'"),
        ({"stage0": {"dataset": "d", "lr": -1}}, "stage0.lr must be a finite non-negative number, not -1"),
        ({"probes": [{"name": "p", "dataset": "d", "sample": 0}]}, "probes[0].sample must be an integer >= 1, not 0"),
        ({"logging": {"tensorboard": 1}}, "logging.tensorboard must be true or false, not 1"),
        ({"train": {"betas": [0.9]}}, "train.betas must be two numbers in [0, 1), not [0.9]"),
        ({"seed": 1.5}, "seed must be an integer >= 0, not 1.5"),
    ],
)
def test_cli_bad_values_name_file_and_key(tmp_path, section, message):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**BASE, **section}))
    out = subprocess.run([sys.executable, "-m", "modx.cli", "--config", "c.yaml", "--print-config"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == f"error: c.yaml: {message}\n"


def test_resolved_config_is_typed_with_stage0_settings():
    from modx.config import RunConfig, TrainSettings, resolve

    data = {**BASE, "stage0": {"dataset": "d", "epochs": 3, "lr": 1e-3}, "train": {"epochs": 7, "lr": 1e-4, "batch_size": 8}}
    cfg = resolve(load_config(data=data, overrides=["train.mode=modx"]))
    assert isinstance(cfg, RunConfig) and isinstance(cfg.train, TrainSettings)
    assert cfg.pieces == ["clip", "modx"] and cfg.modx.alpha == 20.0 and cfg.train.betas == (0.9, 0.98)
    s0, s1 = cfg.stage_settings(0), cfg.stage_settings(1)
    assert (s0.epochs, s0.lr, s0.batch_size) == (3, 1e-3, 8) and (s1.epochs, s1.lr, s1.batch_size) == (7, 1e-4, 8)
    assert resolve(load_config(data=BASE)).stage_settings(0) == resolve(load_config(data=BASE)).train  # no stage0
