"""`modx-train`: continual CLIP training (finetune / modx / joint / feature_distill) and `modx-train embed`.

    modx-train --config experiments/configs/tiny_cpu.yaml --set train.mode=modx --set output=runs/tiny-modx
    modx-train --config ... --resume            # continue a killed run from its last checkpoint
    modx-train embed --run RUN --checkpoints a.pt b.pt --output RUN_EMBED [--model NAME]
"""

from __future__ import annotations

import argparse
import sys

from ._require import require_training_stack


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modx-train", description="Continual CLIP training that writes spatial_disorder runs.")
    p.add_argument("--config", required=True, help="YAML or TOML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value with a dotted key, e.g. --set train.lr=1e-4 (repeatable)")
    p.add_argument("overrides_pos", nargs="*", metavar="KEY=VALUE", help="more dotted overrides")
    p.add_argument("--output", help="run directory (same as --set output=...)")
    p.add_argument("--resume", action="store_true", help="continue the run in the output directory from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run that already exists in the output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--report-to", metavar="NAMES", help="training scalars to tensorboard, wandb, both (all) or none; "
                   "comma-separated, like open_clip's (same as logging.tensorboard / logging.wandb)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--stop-after-steps", type=int, default=None, help=argparse.SUPPRESS)  # crash simulation for tests
    return p


def _embed_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modx-train embed", description="Embed a run's probe sets with open_clip checkpoints.")
    p.add_argument("--run", required=True, help="run whose probe sets are embedded")
    p.add_argument("--checkpoints", nargs="+", required=True, help="checkpoints, one stage each, in order")
    p.add_argument("--output", required=True, help="new run directory")
    p.add_argument("--model", help="open_clip model name (default: stored in modx checkpoints)")
    p.add_argument("--stage-names", nargs="+", help="stage names (default stage0, stage1, ...)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--overwrite", action="store_true", help="replace a run that already exists at --output")
    return p


def _fresh_line() -> str:
    """A newline when stderr is a terminal (a progress bar may hold the current line), else nothing."""
    return "\n" if sys.stderr.isatty() else ""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    require_training_stack()
    from spatial_disorder.errors import SpatialDisorderError

    from .errors import DivergedError, InterruptedRun, TrainError

    try:
        if argv and argv[0] == "embed":
            args = _embed_parser().parse_args(argv[1:])
            from .embed_run import embed_checkpoints

            out = embed_checkpoints(args.run, args.checkpoints, args.output, args.model, args.stage_names, args.device, args.batch_size,
                                    overwrite=args.overwrite)
            print(out)
            return 0
        args = _train_parser().parse_intermixed_args(argv)  # overrides may come before, between or after options
        from .config import dump_yaml, load_config

        overrides = list(args.overrides) + list(args.overrides_pos)
        if args.output:
            overrides.append(f"output={args.output}")
        if args.report_to is not None:
            from .report_to import report_to_overrides

            overrides += report_to_overrides(args.report_to)
        config = load_config(args.config, overrides)
        if args.print_config:
            print(dump_yaml(config), end="")
            return 0
        from .runner import train

        out = train(config, resume=args.resume, stop_after_steps=args.stop_after_steps, progress=False if args.no_progress else None,
                    overwrite=args.overwrite)
        print(out)
        return 0
    except InterruptedRun as exc:
        print(f"{_fresh_line()}{exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{_fresh_line()}interrupted before training started: nothing was written", file=sys.stderr)
        return 130
    except DivergedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (TrainError, SpatialDisorderError, ValueError, OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
