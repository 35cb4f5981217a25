"""The README quickstart: fetch the emoji-styles benchmark, train a tiny CLIP continually with plain
fine-tuning and with Mod-X (sharing one stage 0), analyse both runs, compare them, print where the reports are.

    python experiments/quickstart.py [--data-dir DIR] [--out runs/quickstart] [--fresh]

Each step prints the command it runs, so every step can be rerun by hand. Finished runs are reused.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "configs" / "quickstart.yaml"
BIN = Path(sys.executable).parent


def run(cmd: list[str]) -> None:
    printable = " ".join(shlex.quote(str(c)) for c in cmd)
    print(f"\n$ {printable}", flush=True)
    code = subprocess.call([str(c) for c in cmd])
    if code != 0:
        print(f"quickstart: step failed with exit status {code}: {printable}", file=sys.stderr)
        raise SystemExit(code)


def complete(run_dir: Path, n_stages: int = 6) -> bool:
    manifest = run_dir / "run.json"
    return manifest.is_file() and len(json.loads(manifest.read_text()).get("stages", [])) >= n_stages


def tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="benchmark cache (default: $SD_DATA or ~/.cache/spatial-disorder)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "quickstart"), help="where the two runs and the comparison go")
    ap.add_argument("--fresh", action="store_true", help="delete earlier quickstart runs first")
    args = ap.parse_args()
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    start = time.time()

    print("== 1/4 benchmark: emoji styles (Noto -> Twemoji), fetched from the npm registry and built once", flush=True)
    from modx.benchmarks import attribution_text, ensure_emoji_dataset

    dataset = ensure_emoji_dataset(args.data_dir, progress=True)
    captions = dataset / "captions.csv"
    print(f"dataset: {dataset}")

    finetune, modx = out / "finetune", out / "modx"
    common = ["--config", CONFIG, "--set", f"datasets.emoji.path={captions}"]
    print("\n== 2/4 training: stage 0 on Google-style emoji, then 5 Twitter-style slices with plain fine-tuning", flush=True)
    if not complete(finetune):
        if finetune.exists():
            shutil.rmtree(finetune)
        run([tool("modx-train"), *common, "--output", finetune])
    else:
        print(f"reusing {finetune}")
    print("\n== 3/4 training: the same stage 0 and slices with Mod-X (alpha 20, screened KL on the contrastive rows)", flush=True)
    if not complete(modx):
        if modx.exists():
            shutil.rmtree(modx)
        stage0 = finetune / "checkpoints" / "stage0.pt"
        run([tool("modx-train"), *common, "train.mode=modx", "stage0=null", f"model.pretrained={stage0}", "--output", modx])
    else:
        print(f"reusing {modx}")

    print("\n== 4/4 analysis: spatial-disorder reports for both runs and their comparison", flush=True)
    run([tool("sd-analyze"), finetune])
    run([tool("sd-analyze"), modx])
    compare = out / "compare"
    run([tool("sd-analyze"), "compare", finetune, modx, "--out", compare])

    minutes = (time.time() - start) / 60
    print(f"\nquickstart finished in {minutes:.1f} min.\n\n{attribution_text()}\n")
    print("reports:")
    print(f"  fine-tuning  {finetune / 'report' / 'index.html'}")
    print(f"  Mod-X        {modx / 'report' / 'index.html'}")
    print(f"  comparison   {compare / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
