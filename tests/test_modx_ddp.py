"""DDP on gloo with 2 CPU processes: the loss (CLIP + Mod-X over the gathered global batch) and the
averaged gradients equal the single-process values on the same global batch."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

import modx_helpers  # noqa: E402

from modx.distributed import DistContext  # noqa: E402
from modx.losses import make_pieces  # noqa: E402
from modx.runner import Stepper, TeacherModel  # noqa: E402


def test_two_rank_loss_and_gradients_equal_single_process(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed unavailable")
    torch.multiprocessing.spawn(modx_helpers.ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    student, teacher, pixels, tokens = modx_helpers.ddp_setup()
    pieces = make_pieces(["clip", "modx"], {"modx": {"alpha": 20.0, "temperature": 1.0, "reduction": "sum", "include_diagonal": True}})
    stepper = Stepper(student, pieces, None, DistContext(), torch.device("cpu"))
    loss, logs = stepper.loss(pixels, tokens, teacher=TeacherModel(teacher, "fp32", torch.device("cpu")))
    loss.backward()
    assert logs["modx"] > 0  # the teacher differs from the student: the Mod-X term takes part
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
        assert got["logs"]["modx"] == pytest.approx(logs["modx"], rel=1e-4)
        for name, p in student.named_parameters():
            assert torch.allclose(got["grads"][name], p.grad, rtol=1e-4, atol=1e-6), name


@pytest.mark.slow
def test_torchrun_two_ranks_reproduces_a_single_process_run(tmp_path):
    import shutil
    import subprocess
    import sys

    import numpy as np
    import yaml

    from modx.config import load_config
    from modx.runner import train
    from spatial_disorder.run import open_run

    csv = modx_helpers.make_emoji_like(tmp_path / "data")
    single = train(load_config(data=modx_helpers.tiny_config(tmp_path / "one", csv, train={"mode": "modx"})))
    cfg = modx_helpers.tiny_config(tmp_path / "two", csv, train={"mode": "modx"})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    torchrun = shutil.which("torchrun", path=str(__import__("pathlib").Path(sys.executable).parent)) or "torchrun"
    out = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "modx.cli", "--config", str(tmp_path / "c.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    a, b = open_run(single), open_run(tmp_path / "two" / "run")
    assert a.stages == b.stages and b.metadata["world_size"] == 2
    for s in a.stages:
        for p in a.probes:
            for m in ("image", "text"):
                assert np.allclose(a.embeddings(s, p, m), b.embeddings(s, p, m), atol=1e-4), (s, p, m)
