"""End-to-end training on the tiny model: runs, modes, resume after a crash, NaN stop, checkpoints, embed."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")
yaml = pytest.importorskip("yaml")

from modx_helpers import tiny_config  # noqa: E402

from modx.cli import main  # noqa: E402
from modx.config import load_config  # noqa: E402
from modx.errors import DivergedError  # noqa: E402
from modx.runner import CRASH_EXIT, train  # noqa: E402
from spatial_disorder.run import open_run  # noqa: E402


def _arrays(path):
    run = open_run(path)
    return {(s, p, m): np.array(run.embeddings(s, p, m)) for s in run.stages for p in run.probes for m in ("image", "text")}


def test_modx_run_writes_a_complete_run(emoji_csv, tmp_path):
    cfg = load_config(data=tiny_config(tmp_path, emoji_csv, train={"mode": "modx"}))
    out = train(cfg)
    run = open_run(out)
    assert run.stages == ["stage0", "stage1", "stage2"] and set(run.probes) == {"old", "new"}
    img = np.array(run.embeddings("stage2", "old", "image"))
    assert img.shape == (4, 64) and np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
    meta = run.stage_meta("stage1")
    assert meta["phase"] == "slice 1/2" and meta["mode"] == "modx" and meta["steps"] == 2
    assert set(meta["retrieval"]["old"]) >= {"i2t_R@1", "t2i_R@1", "rsum"}
    # t2i R@1 recomputed by brute force from the stored arrays
    probe = run.probes["new"]
    sims = np.array(run.embeddings("stage1", "new", "text")) @ np.array(run.embeddings("stage1", "new", "image")).T
    hits = sims.argmax(axis=1) == probe.text_to_image
    assert meta["retrieval"]["new"]["t2i_R@1"] == pytest.approx(100 * hits.mean())
    # at the first step of a phase the student IS the teacher: the Mod-X term is zero
    assert meta["loss_curve"][0]["modx"] == pytest.approx(0.0, abs=1e-6)
    assert meta["loss_curve"][1]["modx"] > 0
    assert run.stage_meta("stage0")["loss_curve"][0].keys() >= {"step", "loss", "lr", "clip"}
    assert "modx" not in run.stage_meta("stage0")["loss_curve"][0]  # no teacher in stage 0
    assert run.metadata["mode"] == "modx" and run.metadata["config"]["train"]["mode"] == "modx"
    assert yaml.safe_load((out / "config.yaml").read_text()) == json.loads(json.dumps(cfg))
    events = [json.loads(line)["event"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert events.count("stage") == 3 and "step" in events
    for k in range(3):
        assert (out / "checkpoints" / f"stage{k}.pt").is_file()


def test_joint_mode_trains_on_the_union_and_finetune_differs_from_modx(emoji_csv, tmp_path):
    joint = open_run(train(load_config(data=tiny_config(tmp_path / "j", emoji_csv, train={"mode": "joint"}))))
    assert [joint.stage_meta(s)["images"] for s in joint.stages] == [12, 18, 24]
    ft = _arrays(train(load_config(data=tiny_config(tmp_path / "f", emoji_csv))))
    mx = _arrays(train(load_config(data=tiny_config(tmp_path / "m", emoji_csv, train={"mode": "modx"}))))
    assert np.array_equal(ft["stage0", "old", "image"], mx["stage0", "old", "image"])  # same seed, same stage 0
    assert not np.allclose(ft["stage2", "old", "image"], mx["stage2", "old", "image"])


def test_resume_after_a_crash_matches_an_uninterrupted_run(emoji_csv, tmp_path):
    sections = {
        "stage0": {"dataset": "emoji", "where": {"style": "google", "split": "train"}, "epochs": 2},
        "phases": {"dataset": "emoji", "where": {"style": "twitter", "split": "train"}, "random_slices": 1},
        "train": {"mode": "modx", "checkpoint_every": 2},
    }
    whole = train(load_config(data=tiny_config(tmp_path / "whole", emoji_csv, **sections)))
    cfg = tiny_config(tmp_path / "crash", emoji_csv, **sections)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "modx.cli", "--config", str(tmp_path / "c.yaml"), "--no-progress"]
    # 6 steps in stage 0, then 6 in stage 1: crash after step 3 of stage 1 (last checkpoint: its step 2)
    crashed = subprocess.run(cmd + ["--stop-after-steps", "9"], capture_output=True, text=True)
    assert crashed.returncode == CRASH_EXIT, crashed.stderr
    run_dir = tmp_path / "crash" / "run"
    assert open_run(run_dir).stages == ["stage0"]
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    a, b = _arrays(whole), _arrays(run_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert np.allclose(a[key], b[key], rtol=0, atol=1e-6), key
    ma, mb = open_run(whole).stage_meta("stage1"), open_run(run_dir).stage_meta("stage1")
    assert ma["retrieval"] == mb["retrieval"] and ma["epoch_loss"] == pytest.approx(mb["epoch_loss"], abs=1e-6)
    assert [p["step"] for p in mb["loss_curve"]] == list(range(1, 7))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(emoji_csv, tmp_path, monkeypatch):
    import modx.runner

    calls = []
    real = modx.runner.total_loss

    def poisoned(pieces, batch):  # the 5th step (stage 1, step 2; stage 0 has 3) returns NaN
        calls.append(1)
        loss, logs = real(pieces, batch)
        return (loss * float("nan") if len(calls) == 5 else loss), logs

    monkeypatch.setattr(modx.runner, "total_loss", poisoned)
    cfg = load_config(data=tiny_config(tmp_path, emoji_csv))
    with pytest.raises(DivergedError) as err:
        train(cfg)
    assert "stage1 step 1: loss is nan" in str(err.value) and "\n" not in str(err.value)
    run = open_run(cfg["output"])
    assert run.stages == ["stage0"]
    from modx import checkpoint

    last = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["position"]["stage"] == 0 and last["position"]["done"]
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_local_pretrained_checkpoint_and_embed_command(emoji_csv, tmp_path, capsys):
    out = train(load_config(data=tiny_config(tmp_path, emoji_csv)))
    ckpts = out / "checkpoints"
    # an open_clip-style checkpoint ({'state_dict': {'module.' + key: ...}}) made by the test
    state = torch.load(ckpts / "stage2.pt", weights_only=True)["model"]
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "openclip_style.pt")
    from modx.models import create

    model = create("modx-tiny-vit-32", str(tmp_path / "openclip_style.pt")).model
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    # embed the run's probes with two checkpoints: identical to the run's own stage arrays
    rc = main(["embed", "--run", str(out), "--checkpoints", str(ckpts / "stage0.pt"), str(tmp_path / "openclip_style.pt"),
               "--model", "modx-tiny-vit-32", "--stage-names", "first", "last", "--output", str(tmp_path / "emb")])
    assert rc == 0
    mine, theirs = _arrays(out), _arrays(tmp_path / "emb")
    for probe in ("old", "new"):
        for mod in ("image", "text"):
            assert np.allclose(theirs["first", probe, mod], mine["stage0", probe, mod], atol=1e-6)
            assert np.allclose(theirs["last", probe, mod], mine["stage2", probe, mod], atol=1e-6)
    capsys.readouterr()
    assert main(["embed", "--run", str(out), "--checkpoints", str(tmp_path / "missing.pt"), "--output", str(tmp_path / "e2")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_cli_runs_the_shipped_tiny_config(emoji_csv, tmp_path, capsys):
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "tiny_cpu_modx.yaml"
    rc = main(["--config", str(config), "--set", f"datasets.emoji.path={emoji_csv}", "--set", "stage0.epochs=1",
               "train.epochs=1", "train.batch_size=4", "--output", str(tmp_path / "cli"), "--no-progress"])
    assert rc == 0
    run = open_run(tmp_path / "cli")
    assert len(run.stages) == 6 and set(run.probes) == {"google_test", "twitter_test", "google_seen"}
    assert run.probes["google_seen"].n_images == 12  # sample of 300 capped at what exists
    assert main(["--config", str(config), "--output", str(tmp_path / "cli"), "--set", f"datasets.emoji.path={emoji_csv}"]) == 2
    assert "a run already exists" in capsys.readouterr().err


def test_teacher_cache_is_exact_without_augmentation(emoji_csv, tmp_path):
    modx_cfg = {"mode": "modx"}
    exact = _arrays(train(load_config(data=tiny_config(tmp_path / "a", emoji_csv, train=modx_cfg))))
    cache = {"modx": {"alpha": 20.0, "temperature": 1.0, "reduction": "sum", "include_diagonal": True, "teacher_cache": True},
             "feature_distill": {"weight": 1.0, "kind": "cosine"}}
    cached = _arrays(train(load_config(data=tiny_config(tmp_path / "b", emoji_csv, train=modx_cfg, loss=cache))))
    for key in exact:
        assert np.allclose(exact[key], cached[key], atol=1e-5), key
