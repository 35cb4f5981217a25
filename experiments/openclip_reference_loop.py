"""open_clip's own training loop (``open_clip_train``) on the modx model configs, for side-by-side benchmarks.

Two ways in:

- :class:`OpenClipTrainLoop`: open_clip_train's ``train_one_epoch`` (scheduler, forward with dict output,
  ``ClipLoss`` from ``open_clip.create_loss``, backward, gradient clip, AdamW step, logit-scale clamp, meters,
  logging) driven in-process over pre-built batches, with the model, loss, optimizer and schedule built as
  ``open_clip_train.main`` builds them. Data loading is excluded, as it is on our side of the benchmark.
- ``python experiments/openclip_reference_loop.py ARGS``: the full ``open_clip_train.main`` command line
  (e.g. ``--dataset-type synthetic``) with the modx model configs registered.

The open_clip_torch wheel ships ``open_clip_train``, but its data module imports ``braceexpand`` and
``webdataset`` at module level; they are only used for webdataset shards, so placeholders stand in for
them when they are not installed (any use of them raises).
"""

from __future__ import annotations

import importlib.util
import sys
import time
import types


def install_import_stubs() -> None:
    """Placeholders for ``braceexpand`` / ``webdataset`` when missing (only the webdataset reader needs them)."""

    def missing(name):
        def fail(*_args, **_kwargs):
            raise RuntimeError(f"{name} is not installed (placeholder for open_clip_train's webdataset reader)")

        return fail

    def lookup(prefix):
        def getattr_(name):
            if name.startswith("__"):
                raise AttributeError(name)
            return missing(f"{prefix}.{name}")

        return getattr_

    if "braceexpand" not in sys.modules and importlib.util.find_spec("braceexpand") is None:
        mod = types.ModuleType("braceexpand")
        mod.braceexpand = missing("braceexpand")
        sys.modules["braceexpand"] = mod
    if "webdataset" not in sys.modules and importlib.util.find_spec("webdataset") is None:
        root = types.ModuleType("webdataset")
        root.PipelineStage = type("PipelineStage", (), {})
        root.__getattr__ = lookup("webdataset")
        sys.modules["webdataset"] = root
        for sub in ("filters", "tariterators", "shardlists", "utils"):
            mod = types.ModuleType(f"webdataset.{sub}")
            mod.__getattr__ = lookup(f"webdataset.{sub}")
            setattr(root, sub, mod)
            sys.modules[f"webdataset.{sub}"] = mod


class _Batches(list):
    """A list of (images, texts) batches with the attributes ``train_one_epoch`` reads from a DataLoader."""

    def __init__(self, batches, batch_size):
        super().__init__(batches)
        self.num_batches = len(batches)
        self.num_samples = len(batches) * batch_size


class OpenClipTrainLoop:
    """open_clip_train's ``train_one_epoch`` on ``model_name`` (fp32, CPU), built as ``open_clip_train.main`` builds it."""

    def __init__(self, model_name: str, batch_size: int, lr: float = 1e-5, wd: float = 0.1, grad_clip: float = 1.0,
                 seed: int = 0):
        install_import_stubs()
        import open_clip
        import torch
        from open_clip_train.data import DataInfo
        from open_clip_train.main import random_seed
        from open_clip_train.params import parse_args
        from open_clip_train.scheduler import cosine_lr
        from open_clip_train.train import train_one_epoch

        from modx.models import register_packaged_configs

        register_packaged_configs()
        args = parse_args([
            "--dataset-type", "synthetic", "--model", model_name, "--batch-size", str(batch_size), "--precision", "fp32",
            "--device", "cpu", "--lr", str(lr), "--wd", str(wd), "--grad-clip-norm", str(grad_clip), "--warmup", "0",
            "--workers", "0", "--seed", str(seed), "--log-every-n-steps", "100000",
        ])
        args.distributed, args.world_size, args.rank, args.local_rank = False, 1, 0, 0  # as init_distributed_device sets
        args.distill = False  # as main sets it without --distill-model
        args.wandb, args.tensorboard = False, False  # main: from --report-to (empty)
        random_seed(args.seed, 0)
        model = open_clip.create_model_and_transforms(model_name, None, precision="fp32", device="cpu", output_dict=True)[0]
        exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
        named = list(model.named_parameters())
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for n, p in named if exclude(n, p) and p.requires_grad], "weight_decay": 0.0},
             {"params": [p for n, p in named if not exclude(n, p) and p.requires_grad], "weight_decay": args.wd}],
            lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps,
        )
        self.model, self.args, self.loss = model, args, open_clip.create_loss(args)
        self._train_one_epoch, self._data_info, self._cosine_lr = train_one_epoch, DataInfo, cosine_lr
        self.epoch = 0

    def run(self, batches) -> float:
        """Seconds for one ``train_one_epoch`` over ``batches`` (a list of (images, texts)); the model keeps training."""
        data = {"train": self._data_info(_Batches(batches, self.args.batch_size))}
        scheduler = self._cosine_lr(self.optimizer, self.args.lr, 0, len(batches) * (self.epoch + 1))
        t = time.perf_counter()
        self._train_one_epoch(self.model, data, self.loss, self.epoch, self.optimizer, None, scheduler, None, self.args)
        seconds = time.perf_counter() - t
        self.epoch += 1
        return seconds


def main(argv: list[str] | None = None) -> None:
    """``open_clip_train.main`` with the modx configs registered (e.g. ``--model modx-tiny-vit-32``)."""
    install_import_stubs()
    from open_clip_train.main import main as open_clip_main

    from modx.models import register_packaged_configs

    register_packaged_configs()
    open_clip_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
