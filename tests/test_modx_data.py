"""Data adapters on small fixture files in their real formats, phase plans and probe sets."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("open_clip")

from modx_helpers import tiny_config, write_coco, write_karpathy, write_wds  # noqa: E402

from modx.config import load_config  # noqa: E402
from modx.data import filter_rows, load_source  # noqa: E402
from modx.data.items import ImageLoader, ItemSet, epoch_order  # noqa: E402
from modx.data.wds import expand_braces  # noqa: E402
from modx.errors import ConfigError, DataError  # noqa: E402
from modx.plan import build_plan  # noqa: E402


def test_csv_groups_captions_resolves_relative_paths_and_filters(emoji_csv):
    table = load_source("emoji", {"format": "csv", "path": str(emoji_csv), "image_id_key": "image_id"})
    assert len(table) == 2 * 16 * 2
    google = filter_rows(table, {"style": "google", "split": "train"})
    items = ItemSet.from_table(google)
    assert len(items) == 12 and all(len(c) == 2 for c in items.captions)
    assert items.ids[0] == "google-red-square"
    assert items.captions[0] == ["a red square", "square in red"]
    assert items.images[0] == str(emoji_csv.parent / "img/google_red_square.png")
    img = ImageLoader()(items.images[0])
    assert img.size == (32, 32) and img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((16, 16)) == (220, 40, 40)
    assert len(filter_rows(table, {"style": ["google", "twitter"], "split": "test"})) == 2 * 4 * 2
    with pytest.raises(ConfigError, match="no column 'colour'"):
        filter_rows(table, {"colour": "red"})
    with pytest.raises(ConfigError, match="no rows match"):
        filter_rows(table, {"style": "apple"})


def test_tsv_with_custom_keys_and_missing_column(tmp_path):
    from modx_helpers import draw

    draw("red", "bar", "google").save(tmp_path / "a.png")
    (tmp_path / "d.tsv").write_text("img\ttext\nimages/../a.png\ta red bar\na.png\tred bar again\n")
    table = load_source("d", {"format": "tsv", "path": str(tmp_path / "d.tsv"), "img_key": "img", "caption_key": "text"})
    items = ItemSet.from_table(table)
    assert len(items) == 2  # grouped by path text when no image_id_key is given
    with pytest.raises(DataError, match="no column 'filepath'"):
        load_source("d", {"format": "tsv", "path": str(tmp_path / "d.tsv")})
    with pytest.raises(DataError, match="not found"):
        load_source("d", {"format": "csv", "path": str(tmp_path / "nope.csv")})


def test_coco_captions_json(tmp_path):
    path = write_coco(tmp_path / "coco")
    table = load_source("coco", {"format": "coco", "path": str(path)})
    items = ItemSet.from_table(table)
    assert items.ids == ["100", "101", "102", "103"]
    assert sorted(items.captions[0]) == ["a red square number 0", "a red square number 1"]
    assert ImageLoader()(items.images[1]).getpixel((16, 16)) == (220, 40, 40)
    (tmp_path / "bad.json").write_text('{"images": []}')
    with pytest.raises(DataError, match="not a COCO captions file"):
        load_source("bad", {"format": "coco", "path": str(tmp_path / "bad.json")})


def test_karpathy_split_json(tmp_path):
    path = write_karpathy(tmp_path / "k")
    table = load_source("k", {"format": "karpathy", "path": str(path)})
    assert set(table["split"]) == {"train", "test"}
    test = ItemSet.from_table(filter_rows(table, {"split": "test"}))
    assert test.ids == ["0"] and test.captions == [["A red square.", "square red"]]
    assert test.images[0] == str(tmp_path / "k" / "train2014" / "k_0.png")
    assert ImageLoader()(test.images[0]).getpixel((0, 0)) == (30, 30, 30)


def test_webdataset_shards_read_with_tarfile(tmp_path):
    pattern = write_wds(tmp_path / "wds", n_shards=2, per_shard=2)
    assert len(expand_braces(pattern)) == 2
    table = load_source("w", {"format": "wds", "path": pattern})
    items = ItemSet.from_table(table)
    assert len(items) == 4
    assert items.captions == [["a red square"], ["a red circle"], ["a red bar"], ["a red cross"]]
    assert "colour" in table.columns  # scalar JSON fields become filterable columns
    img = ImageLoader()(items.images[1], items.shards[1])
    assert img.getpixel((16, 16)) == (220, 40, 40)


def test_epoch_order_is_a_pure_function_and_covers_items():
    a = epoch_order(10, 4, seed=1, phase=2, epoch=3, drop_last=True)
    assert a == epoch_order(10, 4, seed=1, phase=2, epoch=3, drop_last=True)
    assert [len(b) for b in a] == [4, 4]
    b = epoch_order(10, 4, seed=1, phase=2, epoch=4, drop_last=False)
    assert sorted(i for batch in b for i, _ in batch) == list(range(10))
    assert a != epoch_order(10, 4, seed=1, phase=2, epoch=4, drop_last=True)


def test_phase_plans_and_probes(emoji_csv, tmp_path):
    base = tiny_config(tmp_path, emoji_csv)
    plan = build_plan(load_config(data=base))
    assert plan.stage0.n_images == 12 and [p.n_images for p in plan.phases] == [6, 6]
    ids = [set(p.table["image_id"]) for p in plan.phases]
    assert not ids[0] & ids[1] and all(i.startswith("twitter-") for i in ids[0] | ids[1])
    old = plan.probes[0].probe
    assert old.n_images == 4 and old.n_texts == 8 and list(old.text_to_image) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert set(old.images["domain"]) == {"old"}

    by_col = dict(base, phases={"dataset": "emoji", "where": {"style": "twitter"}, "split_by": "category", "order": ["red", "blue"]})
    plan = build_plan(load_config(data=by_col))
    assert [p.label for p in plan.phases] == ["category=red", "category=blue"]
    assert set(plan.phases[1].table["category"]) == {"blue"}

    lists = dict(base, phases={"dataset": "emoji", "lists": [["twitter-red-bar"], ["twitter-blue-bar", "twitter-blue-cross"]]})
    plan = build_plan(load_config(data=lists))
    assert [p.n_images for p in plan.phases] == [1, 2]

    sampled = dict(base, probes=[{"name": "seen", "dataset": "emoji", "where": {"style": "google", "split": "train"}, "sample": 5, "seed": 3}])
    a = build_plan(load_config(data=sampled)).probes[0].probe
    b = build_plan(load_config(data=sampled)).probes[0].probe
    assert a.n_images == 5 and list(a.images["id"]) == list(b.images["id"])

    with pytest.raises(ConfigError, match="exactly one of"):
        build_plan(load_config(data=dict(base, phases={"dataset": "emoji", "split_by": "style", "random_slices": 2})))
    with pytest.raises(ConfigError, match="unknown dataset"):
        build_plan(load_config(data=dict(base, probes=[{"name": "x", "dataset": "nope"}])))


def test_prepared_probe_inputs_embed_exactly_like_streamed_ones(emoji_csv):
    import numpy as np

    from modx import models
    from modx.embed import PreparedItems, embed_items

    table = load_source("emoji", {"format": "csv", "path": str(emoji_csv), "image_id_key": "image_id"})
    items = ItemSet.from_table(filter_rows(table, {"style": "google"}))
    bundle = models.create("modx-tiny-vit-32")
    args = (bundle.eval_transform, bundle.tokenizer, bundle.model.logit_scale.device)
    streamed = embed_items(bundle.model, items, *args, batch_size=5)
    cached = PreparedItems(items, bundle.eval_transform, bundle.tokenizer, batch_size=5)
    assert cached.pixels is not None and cached.pixels.shape[0] == len(items)
    assert PreparedItems(items, bundle.eval_transform, bundle.tokenizer, max_pixel_bytes=10).pixels is None  # over the cap: streams
    again = embed_items(bundle.model, cached, None, None, args[2], batch_size=7)
    for key in ("image", "text"):
        assert streamed[key].shape == again[key].shape
        np.testing.assert_allclose(streamed[key], again[key], atol=1e-6)


def test_probe_sets_sharing_captions_encode_each_caption_once(emoji_csv, monkeypatch):
    import numpy as np

    from modx import models
    from modx.embed import PreparedItems, embed_items, embed_probe_sets

    table = load_source("emoji", {"format": "csv", "path": str(emoji_csv), "image_id_key": "image_id"})
    bundle = models.create("modx-tiny-vit-32")
    device = bundle.model.logit_scale.device
    prepared = {s: PreparedItems(ItemSet.from_table(filter_rows(table, {"style": s})), bundle.eval_transform, bundle.tokenizer)
                for s in ("google", "twitter")}  # the same concepts and captions in two styles
    import modx.embed

    calls = []
    real_encoder = modx.embed.text_encoder

    def counting_encoder(model):
        encode = real_encoder(model)
        return lambda tokens, normalize: calls.append(len(tokens)) or encode(tokens, normalize=normalize)

    monkeypatch.setattr(modx.embed, "text_encoder", counting_encoder)
    together = embed_probe_sets(bundle.model, prepared, device)
    distinct = {c for p in prepared.values() for c in p.captions}
    assert sum(calls) == len(distinct) < sum(len(p.captions) for p in prepared.values())
    for name, p in prepared.items():
        alone = embed_items(bundle.model, p, None, None, device)
        for key in ("image", "text"):
            np.testing.assert_allclose(together[name][key], alone[key], atol=1e-5)


def test_trimmed_text_encoder_equals_open_clip_encode_text():
    import torch

    from modx import models
    from modx.embed import text_encoder

    bundle = models.create("modx-tiny-vit-32")
    model = bundle.model.eval()
    tokens = bundle.tokenizer(["a red circle", "the flag of a country far away with a long name", "x"])
    assert (tokens[:, -5:] == 0).all()  # padded: the trimmed path is taken
    with torch.no_grad():
        full = model.encode_text(tokens, normalize=True)
        encode = text_encoder(model)
        assert encode.__name__ == "encode"  # the trimming path, not open_clip's encode_text
        trimmed = encode(tokens, normalize=True)
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=1e-5)
