"""Embed the probe sets of an existing run with a list of open_clip checkpoints, writing a new run.

For users of plain open_clip fine-tuning: their checkpoints become the stages of a run that
``sd-analyze`` can read. Image paths of the probe tables are used as written, or relative to the run folder;
``shard::member`` paths are members of webdataset tars.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from spatial_disorder.errors import RunFormatError
from spatial_disorder.run import RunWriter, open_run
from spatial_disorder.run.probe import check_name

from . import models
from .data.items import ItemSet
from .embed import embed_items, retrieval
from .errors import ConfigError


def _items_for(probe, run_dir: Path) -> ItemSet:
    if "image_path" not in probe.images.columns:
        raise ConfigError(f"probe {probe.name!r}: the images table has no image_path column, nothing to embed")
    images, shards = [], []
    for raw in probe.images["image_path"].astype(str):
        shard, _, member = raw.rpartition("::") if "::" in raw else ("", "", raw)
        path = shard or member
        if not Path(path).exists() and (run_dir / path).exists():
            path = str(run_dir / path)
        if shard:
            shards.append(path)
            images.append(member)
        else:
            shards.append("")
            images.append(path)
    groups = [probe.texts["caption"].astype(str).to_numpy()[rows].tolist() for rows in probe.image_to_texts()]
    return ItemSet(probe.images["id"].astype(str).tolist(), images, shards, groups)


def _model_names(checkpoints: list[str], model_name: str | None) -> list[str]:
    """The architecture of each checkpoint (``model_name``, else the name a modx checkpoint stores), checked up front."""
    names = []
    for ckpt in checkpoints:
        if not Path(ckpt).is_file():
            raise ConfigError(f"{ckpt}: checkpoint not found")
        arch = model_name
        if arch is None:
            from . import checkpoint

            arch = checkpoint.load(ckpt).get("model_name") if str(ckpt).endswith(".pt") else None
            if arch is None:
                raise ConfigError(f"{ckpt}: no model name stored in it; pass --model")
        names.append(arch)
    return names


def _stage_names(stage_names: list[str] | None, n: int) -> list[str]:
    if stage_names is None:
        return [f"stage{i}" for i in range(n)]
    if len(stage_names) != n:
        raise ConfigError(f"--stage-names has {len(stage_names)} names for {n} checkpoints")
    for name in stage_names:
        try:
            check_name(name, "stage")
        except ValueError as exc:
            raise ConfigError(f"--stage-names: {exc}") from None
    if len(set(stage_names)) != n:
        raise ConfigError(f"--stage-names: duplicate names in {stage_names}")
    return list(stage_names)


def embed_checkpoints(run: str | Path, checkpoints: list[str], output: str | Path, model_name: str | None = None,
                      stage_names: list[str] | None = None, device: str = "auto", batch_size: int = 256,
                      overwrite: bool = False) -> Path:
    """Write a run at ``output`` with the probes of ``run`` and one stage per checkpoint (in order).

    Everything that can be checked is checked before the run is created; a failure after that removes it.
    """
    source = open_run(run, check_sha256=False)
    names = _stage_names(stage_names, len(checkpoints))
    archs = _model_names(checkpoints, model_name)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    items = {name: _items_for(p, Path(source.path)) for name, p in source.probes.items()}
    output = Path(output)
    if (output / "run.json").exists() and not overwrite:
        raise ConfigError(f"{output}: a run already exists here; replace it with --overwrite or choose another --output")
    existed = output.exists()
    try:
        writer = RunWriter.create(output, metadata={"source_run": str(run), "checkpoints": [str(c) for c in checkpoints],
                                                    "trainer": "modx embed"}, overwrite=overwrite)
    except RunFormatError as exc:
        raise ConfigError(str(exc)) from None
    try:
        for probe in source.probes.values():
            writer.add_probe(probe)
        for name, ckpt, arch in zip(names, checkpoints, archs):
            bundle = models.create(arch, str(ckpt))
            model = bundle.model.to(dev)
            arrays, scores = {}, {}
            for pname, probe in source.probes.items():
                arrays[pname] = embed_items(model, items[pname], bundle.eval_transform, bundle.tokenizer, dev, "auto", batch_size)
                scores[pname] = retrieval(arrays[pname]["image"], arrays[pname]["text"], probe.text_to_image)
            writer.write_stage(name, arrays, meta={"checkpoint": str(ckpt), "model": arch, "retrieval": scores})
    except BaseException:
        shutil.rmtree(output, ignore_errors=True)
        if existed:
            output.mkdir(parents=True, exist_ok=True)
        raise
    return writer.path
