"""Training scalars for TensorBoard (read back from the event file) and wandb (a stand-in module), off by default."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")
yaml = pytest.importorskip("yaml")

from modx_helpers import tiny_config  # noqa: E402

from modx.config import load_config  # noqa: E402
from modx.runner import train  # noqa: E402
from spatial_disorder.run import open_run  # noqa: E402


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_report_to_tensorboard_writes_every_step_and_stage(emoji_csv, tmp_path):
    pytest.importorskip("tensorboard")
    cfg = tiny_config(tmp_path, emoji_csv, train={"mode": "modx"})
    cfg["output"] = "run"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run([sys.executable, "-m", "modx.cli", "--config", "c.yaml", "--no-progress", "--report-to", "tensorboard"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    run = open_run(tmp_path / "run")
    scalars = _scalars(tmp_path / "run" / "tensorboard")
    # every step (log_every 1), numbered on across stages: stage 0 has 3 steps, stages 1 and 2 have 2 each
    curves = [run.stage_meta(s)["loss_curve"] for s in run.stages]
    offsets = [0, len(curves[0]), len(curves[0]) + len(curves[1])]
    expected_loss = [(off + p["step"], p["loss"]) for off, curve in zip(offsets, curves) for p in curve]
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 8))
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([v for _, v in expected_loss], rel=1e-6)
    assert [v for _, v in scalars["train/lr"]] == pytest.approx([p["lr"] for c in curves for p in c], rel=1e-6)
    assert [s for s, _ in scalars["train/modx"]] == [4, 5, 6, 7]  # the Mod-X piece exists from stage 1 on
    assert [v for _, v in scalars["train/stage"]] == [0, 0, 0, 1, 1, 2, 2]
    # the logit scale after a stage's last step is the one in that stage's checkpoint
    for k, last in ((0, 3), (2, 7)):
        ckpt = torch.load(tmp_path / "run" / "checkpoints" / f"stage{k}.pt", weights_only=True)["model"]
        assert dict(scalars["train/logit_scale"])[last] == pytest.approx(float(ckpt["logit_scale"].exp()), rel=1e-6)
    # each probe's retrieval at every stage, against the stage index
    for probe in ("old", "new"):
        for metric in ("i2t_R@1", "t2i_R@5", "rsum"):
            got = scalars[f"probe/{probe}/{metric}"]
            assert got == [(k, pytest.approx(run.stage_meta(s)["retrieval"][probe][metric], rel=1e-6)) for k, s in enumerate(run.stages)]


def test_scalars_are_off_by_default_and_bad_names_are_refused(emoji_csv, tmp_path):
    out = train(load_config(data=tiny_config(tmp_path, emoji_csv, train={"epochs": 1})))
    assert not (out / "tensorboard").exists()
    assert load_config(data=tiny_config(tmp_path, emoji_csv))["logging"] == {"tensorboard": False, "wandb": False, "wandb_project": "modx"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_config(tmp_path, emoji_csv)))
    bad = subprocess.run([sys.executable, "-m", "modx.cli", "--config", "c.yaml", "--report-to", "tensorbored", "--print-config"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --report-to: unknown 'tensorbored'") and bad.stderr.count("\n") == 1


def test_wandb_when_installed_and_asked(emoji_csv, tmp_path, monkeypatch):
    calls = {"init": [], "log": [], "finish": 0}

    class FakeRun:
        def log(self, values):
            calls["log"].append(values)

        def finish(self):
            calls["finish"] += 1

    def init(**kwargs):
        calls["init"].append(kwargs)
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    cfg = load_config(data=tiny_config(tmp_path, emoji_csv, train={"epochs": 1}), overrides=["logging.wandb=true",
                                                                                             "logging.wandb_project=demo"])
    out = train(cfg)
    assert len(calls["init"]) == 1 and calls["init"][0]["project"] == "demo" and calls["init"][0]["config"]["seed"] == 0
    steps = [c for c in calls["log"] if "train/loss" in c]
    assert [c["global_step"] for c in steps] == [1, 2, 3, 4, 5]  # 3 steps in stage 0, 1 in each slice
    stages = [c for c in calls["log"] if "probe/old/rsum" in c]
    assert [c["probe/old/rsum"] for c in stages] == pytest.approx([open_run(out).stage_meta(s)["retrieval"]["old"]["rsum"]
                                                                    for s in open_run(out).stages])
    assert calls["finish"] == 1


def test_logging_changes_are_safe_on_resume():
    from modx.config import resume_changes

    base = {"datasets": {"d": {"path": "x.csv"}}, "phases": {"dataset": "d", "random_slices": 2}, "probes": [{"name": "p"}]}
    a = load_config(data=base)
    b = load_config(data=base, overrides=["logging.tensorboard=true", "logging.wandb=true"])
    assert resume_changes(a, b) == []
    legacy = {k: v for k, v in a.items() if k != "logging"}  # a run saved before the logging section existed
    assert resume_changes(legacy, b) == []
