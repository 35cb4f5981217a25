"""`modx-train` as a user meets it in a fresh folder: resume with a changed config, Ctrl-C, failed commands that
must leave nothing behind, `--overwrite`, stage names, and a log without the interrupted attempt's steps."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")
yaml = pytest.importorskip("yaml")

from modx_helpers import make_emoji_like, tiny_config  # noqa: E402

from modx.runner import CRASH_EXIT  # noqa: E402

BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


def _modx_train(cwd: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([_tool("modx-train"), *map(str, args)], cwd=cwd, capture_output=True, text=True, **kw)


def _write_config(tmp_path: Path, csv: Path, **sections) -> Path:
    cfg = tiny_config(tmp_path, csv, **sections)
    cfg["output"] = "run"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "c.yaml"


SHORT = {
    "stage0": {"dataset": "emoji", "where": {"style": "google", "split": "train"}, "epochs": 1},
    "phases": {"dataset": "emoji", "where": {"style": "twitter", "split": "train"}, "random_slices": 1},
    "train": {"mode": "modx", "epochs": 2, "checkpoint_every": 2},
}


def _crashed_run(tmp_path: Path, csv: Path) -> Path:
    """A run killed after step 3 of stage 1 (3 steps in stage 0; stage 1's last checkpoint: its step 2)."""
    _write_config(tmp_path, csv, **SHORT)
    crashed = _modx_train(tmp_path, "--config", "c.yaml", "--no-progress", "--stop-after-steps", "6")
    assert crashed.returncode == CRASH_EXIT, crashed.stderr
    return tmp_path / "run"


def test_resume_refuses_a_changed_config_and_names_the_keys(emoji_csv, tmp_path):
    run = _crashed_run(tmp_path, emoji_csv)
    manifest = (run / "run.json").read_bytes()
    out = _modx_train(tmp_path, "--config", "c.yaml", "--resume", "train.mode=finetune", "train.lr=5e-4", "train.epochs=3")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "differs from the run's in train.epochs, train.lr, train.mode" in out.stderr
    assert (run / "run.json").read_bytes() == manifest  # nothing changed
    # progress bars and loader workers change no number: allowed
    ok = _modx_train(tmp_path, "--config", "c.yaml", "--resume", "--no-progress", "train.num_workers=0")
    assert ok.returncode == 0, ok.stderr
    from spatial_disorder.run import open_run

    r = open_run(run)
    assert r.stages == ["stage0", "stage1"] and r.stage_meta("stage1")["mode"] == "modx" and r.metadata["config"]["train"]["lr"] == 1e-3


def test_resumed_log_holds_each_step_once(emoji_csv, tmp_path):
    run = _crashed_run(tmp_path, emoji_csv)
    before = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in before if r["event"] == "step" and r["stage"] == 1] == [1, 2, 3]  # step 3 was not saved
    assert _modx_train(tmp_path, "--config", "c.yaml", "--resume").returncode == 0
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    for stage, n in ((0, 3), (1, 6)):
        assert [r["step"] for r in log if r["event"] == "step" and r["stage"] == stage] == list(range(1, n + 1))
    assert [r["epoch"] for r in log if r["event"] == "epoch" and r["stage"] == 1] == [0, 1]
    assert sum(r["event"] == "resume" for r in log) == 1


def test_ctrl_c_ends_with_one_line_and_exit_130(emoji_csv, tmp_path):
    _write_config(tmp_path, emoji_csv, stage0={**SHORT["stage0"], "epochs": 500}, train={"checkpoint_every": 2})
    # A job started in the background of a non-interactive shell (as CI runners may start the suite) inherits SIGINT
    # as ignored, and Python then never raises KeyboardInterrupt: give the child the terminal's default, as a user has.
    proc = subprocess.Popen([_tool("modx-train"), "--config", "c.yaml", "--no-progress"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = tmp_path / "run" / "train_log.jsonl"
    deadline = time.monotonic() + 300  # a guard against a hang, not a measurement
    while proc.poll() is None and time.monotonic() < deadline:
        if log.exists() and '"checkpoint"' in log.read_text():
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    assert stderr.startswith("interrupted: the last checkpoint (stage0 step ") and "--resume" in stderr
    assert str(Path("run") / "checkpoints" / "last.pt") in stderr
    again = _modx_train(tmp_path, "--config", "c.yaml", "--resume", "stage0.epochs=500", "--stop-after-steps", "1")
    assert again.returncode == CRASH_EXIT, again.stderr  # the printed advice works


def test_failed_training_leaves_nothing_behind(emoji_csv, tmp_path):
    bench = tmp_path / "bench"
    csv = make_emoji_like(bench)
    victim = next((bench / "img").glob("google_*"))
    victim.rename(tmp_path / "moved.png")  # a stage-0 training image is missing
    _write_config(tmp_path, csv)
    out = _modx_train(tmp_path, "--config", "c.yaml", "--no-progress")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and victim.name in out.stderr
    assert not (tmp_path / "run").exists()
    (tmp_path / "moved.png").rename(victim)  # fixed: the same command now runs
    assert _modx_train(tmp_path, "--config", "c.yaml", "--no-progress").returncode == 0


def test_an_existing_run_is_replaced_only_with_overwrite(emoji_csv, tmp_path):
    _write_config(tmp_path, emoji_csv, **SHORT)
    assert _modx_train(tmp_path, "--config", "c.yaml", "train.epochs=1").returncode == 0
    again = _modx_train(tmp_path, "--config", "c.yaml", "train.epochs=1")
    assert again.returncode == 2 and "--resume" in again.stderr and "--overwrite" in again.stderr and "overwrite=True" not in again.stderr
    created = json.loads((tmp_path / "run" / "run.json").read_text())["created"]
    (tmp_path / "run" / "marker").write_text("old")
    assert _modx_train(tmp_path, "--config", "c.yaml", "train.epochs=1", "--overwrite").returncode == 0
    assert not (tmp_path / "run" / "marker").exists()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["created"] >= created


@pytest.fixture(scope="module")
def trained(emoji_csv, tmp_path_factory):
    from modx.config import load_config
    from modx.runner import train

    tmp = tmp_path_factory.mktemp("trained")
    out = train(load_config(data=tiny_config(tmp, emoji_csv, train={"epochs": 1})))
    state = torch.load(out / "checkpoints" / "stage1.pt", weights_only=True)["model"]
    torch.save({"state_dict": state}, tmp / "plain.pt")  # no model name stored in it
    return out, tmp / "plain.pt"


def test_failed_embed_leaves_nothing_and_the_rerun_works(trained, tmp_path):
    run, plain = trained
    out = _modx_train(tmp_path, "embed", "--run", run, "--checkpoints", run / "checkpoints" / "stage0.pt", plain, "--output", "emb")
    assert out.returncode == 2 and "pass --model" in out.stderr and out.stderr.count("\n") == 1
    assert not (tmp_path / "emb").exists()
    ok = _modx_train(tmp_path, "embed", "--run", run, "--checkpoints", run / "checkpoints" / "stage0.pt", plain, "--output", "emb",
                     "--model", "modx-tiny-vit-32")
    assert ok.returncode == 0, ok.stderr
    again = _modx_train(tmp_path, "embed", "--run", run, "--checkpoints", plain, "--output", "emb", "--model", "modx-tiny-vit-32")
    assert again.returncode == 2 and "--overwrite" in again.stderr
    over = _modx_train(tmp_path, "embed", "--run", run, "--checkpoints", plain, "--output", "emb", "--model", "modx-tiny-vit-32",
                       "--overwrite", "--stage-names", "final")
    assert over.returncode == 0, over.stderr
    from spatial_disorder.run import open_run

    assert open_run(tmp_path / "emb").stages == ["final"]


@pytest.mark.parametrize("names", [["my stage", "b"], ["a\nb", "c"], ["a", "a"]])
def test_bad_stage_names_are_refused_not_rewritten(trained, tmp_path, names):
    run, plain = trained
    out = _modx_train(tmp_path, "embed", "--run", run, "--checkpoints", plain, plain, "--output", "emb",
                      "--model", "modx-tiny-vit-32", "--stage-names", *names)
    assert out.returncode == 2 and out.stderr.startswith("error: --stage-names: ") and out.stderr.count("\n") == 1
    assert not (tmp_path / "emb").exists()


def test_an_interrupt_during_a_checkpoint_write_waits_for_the_write():
    import os

    from modx.store import deferred_interrupt

    done = []
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whatever started the suite
    try:
        with pytest.raises(KeyboardInterrupt):
            with deferred_interrupt():
                os.kill(os.getpid(), signal.SIGINT)  # arrives mid-write
                time.sleep(0.05)
                done.append("written")
        assert done == ["written"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
