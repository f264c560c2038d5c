# ruff: noqa: F811  (pytest fixtures imported from another test module are arguments here)
"""Held-out validation: the split is the documented hash of the sample key, training never sees held-out
rows, their loss terms are logged as val/… (JSONL and TensorBoard tags grouped), and the loss plot has one
panel per term."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_train_loop import base_config, make_cache, student_dir  # noqa: F401  (module fixtures)

from stages.train.metrics import read_metrics
from stages.train.validation import HOLDOUT_SALT, held_out

MASK64 = (1 << 64) - 1


def _reference_held_out(key: int, fraction: float) -> bool:
    """splitmix64's output function on (key xor salt), by hand on Python integers."""
    z = (key ^ HOLDOUT_SALT) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    z ^= z >> 31
    return z < int(fraction * 2.0**64)


def test_held_out_is_the_documented_hash_of_the_sample_key():
    keys = np.asarray([1, 7920, 15839, 2**62 + 5, 123456789], dtype=np.int64)
    for fraction in (0.1, 0.5, 0.9):
        assert held_out(keys, fraction).tolist() == [_reference_held_out(int(k), fraction) for k in keys]
    assert not held_out(keys, 0.0).any()
    many = np.arange(1, 20001, dtype=np.int64) * 7919
    assert abs(held_out(many, 0.25).mean() - 0.25) < 0.02


def test_validation_excludes_held_out_rows_and_logs_val_terms(tmp_path, student_tokenizer, student_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from stages.train.data import CacheStream
    from stages.train.loop import train

    cache = make_cache(tmp_path / "cache", student_tokenizer, num_samples=8)
    keys = np.arange(8) * 7919 + 1  # random_base_rows' sample keys
    fraction = 0.4
    out_keys = {int(k) for k in keys[held_out(keys, fraction)]}
    assert 0 < len(out_keys) < 8
    seen: dict[str, list[str]] = {"train": [], "val": []}

    class Recording(CacheStream):
        def batches(self, cursor, *, epochs, **share):
            for batch, next_cursor in super().batches(cursor, epochs=epochs, **share):
                seen[self.split_side].extend(batch.provenance)
                yield batch, next_cursor

    output = tmp_path / "run"
    config = base_config(cache, student_dir, output, mode="tidal+kl", max_steps=4, save_every=0, val_every=2,
                         val_fraction=fraction, report_to=["jsonl", "tensorboard"],
                         data_workers=0)  # the recording must happen in this process
    train(config, stream_class=Recording)
    import pyarrow.parquet as pq

    key_of = {}
    for shard in sorted(cache.glob("data/shard-*.parquet")):
        parquet = pq.ParquetFile(shard)
        for group in range(parquet.metadata.num_row_groups):
            for row, key in enumerate(parquet.read_row_group(group, columns=["sample_key"]).column(0).to_pylist()):
                key_of[f"data/{shard.name} row group {group} row {row}"] = key
    trained = {key_of[p] for p in seen["train"]}
    assert {key_of[p] for p in seen["val"]} == out_keys
    records = read_metrics(output / "logs" / "metrics.jsonl")
    val = [r for r in records if "val/loss" in r]
    assert [r["step"] for r in val] == [2, 4]
    assert {"val/loss_ce", "val/loss_tidal", "val/loss_kl"} <= set(val[0])
    assert val[0]["val/loss"] == pytest.approx(val[0]["val/loss_ce"] + val[0]["val/loss_tidal"] + val[0]["val/loss_kl"],
                                               rel=1e-5)
    events = EventAccumulator(str(next((output / "logs" / "tensorboard").iterdir())))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/loss_ce", "train/lr", "val/loss", "val/loss_kl"} <= tags
    from PIL import Image

    with Image.open(output / "logs" / "loss_curve.png") as image:  # 4 panels (loss, ce, kl, tidal) of 2.4 in at 120 dpi
        assert image.height == pytest.approx(4 * 2.4 * 120, abs=2)
    assert json.loads((output / "train_config.json").read_text())["val_fraction"] == fraction
    assert not trained & out_keys, "a held-out sample was trained on"
