"""The reference experiment script: its statistics on known numbers, its configs, and one tiny end-to-end run."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
T_975_DF2 = 4.302652729911275  # two-sided 95% Student t quantile, 2 degrees of freedom (statistical tables: 4.303)
T_975_DF3 = 3.182446305284263  # 3 degrees of freedom (tables: 3.182)


from experiments import reference as ref  # noqa: E402


def test_t_interval_known_values():
    mean, low, high, n = ref.t_interval([1.0, 2.0, 3.0])  # sd 1
    assert n == 3 and mean == pytest.approx(2.0)
    assert high - mean == pytest.approx(T_975_DF2 / math.sqrt(3), rel=1e-9)
    assert mean - low == pytest.approx(T_975_DF2 / math.sqrt(3), rel=1e-9)
    mean, low, high, n = ref.t_interval([2.0, 4.0, 6.0, 8.0])  # sd sqrt(20/3)
    assert mean == pytest.approx(5.0)
    assert high - mean == pytest.approx(T_975_DF3 * math.sqrt(20 / 3) / 2, rel=1e-9)


def test_t_interval_degenerate_cases():
    mean, low, high, n = ref.t_interval([7.0, 7.0, 7.0])
    assert (mean, low, high, n) == (7.0, 7.0, 7.0, 3)
    mean, low, high, n = ref.t_interval([5.0, float("nan")])  # a missing seed is left out
    assert mean == 5.0 and n == 1 and math.isnan(low) and math.isnan(high)
    assert ref.t_interval([])[3] == 0


def test_summarise_and_markdown_table():
    rows = pd.DataFrame({"mode": ["finetune"] * 3 + ["modx"] * 2, "seed": [0, 1, 2, 0, 1],
                         "old_r1_i2t": [1.0, 2.0, 3.0, 50.0, 50.0]})
    s = ref.summarise(rows, ["old_r1_i2t"])
    ft = s[s["mode"] == "finetune"].iloc[0]
    assert ft["n"] == 3 and ft["mean"] == pytest.approx(2.0)
    assert ft["ci_high"] - ft["ci_low"] == pytest.approx(2 * T_975_DF2 / math.sqrt(3))
    mx = s[s["mode"] == "modx"].iloc[0]
    assert (mx["mean"], mx["ci_low"], mx["ci_high"]) == (50.0, 50.0, 50.0)
    table = ref.markdown_table(s, [("old_r1_i2t", "old R@1", "%")])
    assert "| old R@1 | % | 2.0 ± 2.5 | 50.0 ± 0.0 |" in table  # 4.303 / sqrt(3) = 2.48
    assert table.splitlines()[0] == "| metric | unit | fine-tune | Mod-X |"


def test_reference_config_resolves(tmp_path):
    csv = _make_dataset(tmp_path / "data")
    over = ref.base_overrides(csv, [])
    full = ref.load(ref.DEFAULT_CONFIG, over)
    assert full["model"]["name"] == "modx-small-vit-32"
    assert full["phases"]["random_slices"] == 5
    assert [p["name"] for p in full["probes"]] == ["google_seen", "twitter_seen"]
    ckpt = tmp_path / "stage0.pt"
    cfg = ref.mode_config(ref.DEFAULT_CONFIG, over, 3, "modx", ckpt, tmp_path / "run")
    assert cfg["stage0"] is None and cfg["model"]["pretrained"] == str(ckpt)
    assert cfg["train"]["mode"] == "modx" and cfg["seed"] == 3 and cfg["phases"]["slice_seed"] == 3
    joint = ref.mode_config(ref.DEFAULT_CONFIG, over, 3, "joint", ckpt, tmp_path / "run")
    old, slices = ref.phase_image_ids(ref.load(ref.DEFAULT_CONFIG, [*over, "phases.slice_seed=3"]))
    lists = joint["phases"]["lists"]
    assert len(lists) == 5 and lists[0] == old + slices[0] and lists[1:] == slices[1:]
    assert all(i.startswith("google/") for i in old) and all(i.startswith("twitter/") for s in slices for i in s)
    assert sorted(sum(slices, [])) == sorted(f"twitter/{c:04x}" for c in range(12))


def _make_dataset(folder: Path, n_concepts: int = 24) -> Path:
    """A tiny dataset in the emoji benchmark's format: 64 px PNGs of two styles, 2 captions per image."""
    from PIL import Image, ImageDraw

    rows = []
    colours = ["red", "green", "blue", "orange", "purple", "black"]
    for style in ("google", "twitter"):
        (folder / "images" / style).mkdir(parents=True, exist_ok=True)
        for c in range(n_concepts):
            concept = f"{c:04x}"
            img = Image.new("RGB", (64, 64), "white")
            draw = ImageDraw.Draw(img)
            box = (8 + c % 4 * 4, 8 + c // 4 * 4, 40 + c % 3 * 6, 40 + c % 5 * 4)
            (draw.ellipse if style == "google" else draw.rectangle)(box, fill=colours[c % len(colours)])
            rel = f"images/{style}/{concept}.png"
            img.save(folder / rel)
            split = "train" if c < n_concepts // 2 else "test"
            label = f"{colours[c % len(colours)]} shape {c}"
            for title in (label, f"an emoji of a {label}"):
                rows.append({"filepath": rel, "title": title, "image_id": f"{style}/{concept}", "style": style, "concept": concept,
                             "category": f"cat{c % 3}", "subcategory": "sub", "split": split})
    pd.DataFrame(rows).to_csv(folder / "captions.csv", index=False)
    return folder / "captions.csv"


def test_reference_end_to_end_tiny(tmp_path):
    csv = _make_dataset(tmp_path / "data")
    args = ["--seeds", "0", "--modes", "finetune", "joint", "--captions", str(csv), "--work-dir", str(tmp_path / "runs"),
            "--results-dir", str(tmp_path / "results"), "--figures-dir", str(tmp_path / "figures"),
            "--set", "model.name=modx-tiny-vit-32", "--set", "stage0.epochs=1", "--set", "train.epochs=1",
            "--set", "phases.random_slices=2", "--set", "model.augment=false"]
    assert ref.main(args) == 0
    rows = pd.read_csv(tmp_path / "results" / "reference.csv")
    assert sorted(rows["mode"]) == ["finetune", "joint"] and set(rows["stages"]) == {3}
    # both modes start from the same stage-0 model
    assert rows["old_r1_t2i_stage0"].nunique() == 1 and rows["new_r1_i2t_stage0"].nunique() == 1
    for col in ("rotation_image_deg", "rotation_text_deg"):
        assert ((rows[col] >= 0) & (rows[col] <= 180)).all()
    assert ((rows["knn_overlap_image"] >= 0) & (rows["knn_overlap_image"] <= 1)).all()
    # forgetting (first - last) is the stage-0 score minus the last score
    assert np.allclose(rows["forget_first_t2i"], rows["old_r1_t2i_stage0"] - rows["old_r1_t2i"])
    md = (tmp_path / "results" / "reference.md").read_text()
    assert "| old-domain R@1 i2t (last) | % |" in md
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "reference_disorder.png", "reference_retrieval.png", "reference_rigid.png", "reference_tradeoff.png"]
    assert ((rows[["rigid_share_image", "rigid_share_text"]] <= 1.0).all()).all()
    # the joint run's first phase holds the old-domain images too
    from spatial_disorder import open_run

    joint = open_run(tmp_path / "runs" / "seed0" / "joint")
    assert joint.stage_meta("stage1")["images"] == 12 + 6 and joint.stage_meta("stage2")["images"] == 12 + 12
    # a second call trains nothing and reuses the cached analyses
    assert ref.main(args) == 0
    again = pd.read_csv(tmp_path / "results" / "reference.csv")
    pd.testing.assert_frame_equal(rows, again)


def test_slice_accuracies_add_up_to_the_probe_score(tmp_path):
    """R@1 of the new-domain probe split by slice, weighted by slice size, is the whole probe's R@1."""
    from spatial_disorder import open_run
    from spatial_disorder.analysis import analyze_run
    from spatial_disorder.run import ProbeSet, write_run

    rng = np.random.default_rng(0)
    n = 20
    ids = [f"twitter/{i:04x}" for i in range(n)]
    probe = ProbeSet.from_pairs(ref.NEW, [f"caption {i}" for i in range(n)], ids=ids)
    stages = {}
    for s in range(3):
        img = rng.normal(size=(n, 8)).astype(np.float32)
        stages[f"stage{s}"] = {ref.NEW: {"image": img, "text": img + rng.normal(scale=1.0, size=img.shape).astype(np.float32)}}
    write_run(tmp_path / "run", [probe], stages)
    run = open_run(tmp_path / "run")
    res = analyze_run(run, k=3)
    slice_of = {i: 1 + (k % 2) for k, i in enumerate(ids)}
    acc = ref.acc_by_group(res, run.stages, ref.NEW, slice_of)
    r = res.retrieval
    for stage in run.stages:
        for d in ("i2t", "t2i"):
            whole = r[(r["stage"] == stage) & (r["probe"] == ref.NEW) & (r["direction"] == d) & (r["metric"] == "R@1")]["value"].iloc[0]
            assert (acc[(stage, d, 1)] + acc[(stage, d, 2)]) / 2 == pytest.approx(whole)


def test_paired_differences_known_values():
    rows = pd.DataFrame({"mode": ["finetune"] * 3 + ["modx"] * 3 + ["joint"], "seed": [0, 1, 2, 0, 1, 2, 0],
                         "old_r1_i2t": [10.0, 20.0, 30.0, 11.0, 22.0, 33.0, 99.0]})
    d = ref.paired_differences(rows, "modx", "finetune", ["old_r1_i2t"]).iloc[0]  # differences 1, 2, 3
    assert d["n"] == 3 and d["mean"] == pytest.approx(2.0)
    assert d["ci_high"] - d["mean"] == pytest.approx(T_975_DF2 / math.sqrt(3))
    j = ref.paired_differences(rows, "joint", "finetune", ["old_r1_i2t"]).iloc[0]  # only seed 0 is paired
    assert j["n"] == 1 and j["mean"] == pytest.approx(89.0)
    table = ref.markdown_table(ref.paired_differences(rows, "modx", "finetune", ["old_r1_i2t"]), [("old_r1_i2t", "old R@1", "%")])
    assert "Mod-X − fine-tune (paired)" in table.splitlines()[0] and "| old R@1 | % | 2.0 ± 2.5 |" in table


def test_script_runs_from_any_folder(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "reference.py"), "--help"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0 and "--report-only" in out.stdout and out.stderr == ""
