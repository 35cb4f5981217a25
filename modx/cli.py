"""`modx-train`: continual CLIP training (placeholder until the training core lands)."""

from __future__ import annotations

import sys

from ._require import require_training_stack


def main(argv: list[str] | None = None) -> int:
    require_training_stack()
    print("modx-train: the training core is not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
