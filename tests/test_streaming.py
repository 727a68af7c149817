"""Data that need not fit in memory: prepared shards and cached latents read a batch at a time.

Bounded memory itself is measured by bench/memory.py (peak RSS at two data sizes), not here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ldm.data.batches import CHECK_IMAGES, ImageBatches, check_images, to_model_range
from ldm.data.latents import LatentShardWriter, open_latents
from ldm.data.prepare import load_split
from ldm.data.shards import ShardedArray
from ldm.diffusion.train import fit_diffusion
from ldm.errors import DataError
from ldm.metrics.extract import batches_of, total_images
from ldm.tracker import NullTracker
from tests.test_diffusion_train import LABELS, LATENTS, assert_same_weights, make_run
from tests.test_prepare import run, write_images, write_manifest


def write_shards(folder: Path, counts: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8) for n in counts]
    for i, array in enumerate(arrays):
        np.save(folder / f"part-{i}.npy", array)
    return arrays


def test_sharded_array_reads_the_rows_concatenation_holds(tmp_path: Path) -> None:
    counts = [5, 8, 1, 8, 3]
    whole = np.concatenate(write_shards(tmp_path, counts))  # (25, 4, 4, 3)
    rows = ShardedArray([tmp_path / f"part-{i}.npy" for i in range(len(counts))])
    assert len(rows) == 25 and rows.shape == whole.shape and rows.dtype == np.uint8
    rng = np.random.default_rng(1)
    for idx in (
        rng.permutation(25),  # every row, unsorted: every shard boundary
        np.array([4, 5, 12, 13, 14, 4, 24, 0]),  # either side of each boundary, a repeat
        np.array([-1, -25]),
        np.array([], dtype=np.int64),
    ):
        np.testing.assert_array_equal(rows[idx], whole[idx])
    np.testing.assert_array_equal(rows[torch.tensor([13, 2])], whole[[13, 2]])
    np.testing.assert_array_equal(rows[3:17], whole[3:17])
    np.testing.assert_array_equal(rows[::-4], whole[::-4])
    np.testing.assert_array_equal(rows[13], whole[13])
    with pytest.raises(IndexError):
        rows[np.array([25])]


def test_sharded_array_rejects_shards_that_do_not_fit(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((2, 4, 4, 3), np.uint8))
    np.save(tmp_path / "b.npy", np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(DataError, match="differ from the first shard"):
        ShardedArray([tmp_path / "a.npy", tmp_path / "b.npy"])
    with pytest.raises(DataError, match="shard missing"):
        ShardedArray([tmp_path / "a.npy", tmp_path / "gone.npy"])


def test_load_split_gives_the_images_the_old_concatenation_gave(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_images(raw, {"cats": 14, "dogs": 9, "owls": 7})
    write_manifest(raw, tmp_path / "manifest.parquet")
    run(raw, tmp_path / "manifest.parquet", tmp_path / "out", shard_size=4)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    for split in ("train", "val"):
        folder = tmp_path / "out" / split
        shards = meta["shards"][split]
        old = np.concatenate([np.load(folder / s["images"]) for s in shards])
        old_labels = np.concatenate([np.load(folder / s["labels"]) for s in shards])
        images, labels = load_split(tmp_path / "out", split)
        assert isinstance(images, ShardedArray) and len(shards) > 1
        np.testing.assert_array_equal(images[: len(images)], old)
        np.testing.assert_array_equal(labels, old_labels)
        idx = np.random.default_rng(0).permutation(len(old))
        np.testing.assert_array_equal(images[idx], old[idx])

        # Training batches and the check subset are the same whichever way the split is held.
        on_disk = ImageBatches(images, labels, batch_size=5, seed=3, hflip=True)
        in_memory = ImageBatches(old, old_labels, batch_size=5, seed=3, hflip=True)
        for step in (0, 1, 7):
            for a, b in zip(on_disk.batch(step), in_memory.batch(step), strict=True):
                assert torch.equal(a, b)
        assert torch.equal(check_images(images), to_model_range(old))  # fewer than the cap


def test_feature_batches_read_the_shards_one_batch_at_a_time(tmp_path: Path) -> None:
    """The reference stage's batches: the rows of the old copy-it-all, read as the loop goes."""
    whole = np.concatenate(write_shards(tmp_path, [5, 8, 1, 8, 3]))  # (25, 4, 4, 3)
    reads: list[int] = []

    class Counted(ShardedArray):
        def take(self, indices: np.ndarray) -> np.ndarray:
            reads.append(len(indices))
            return super().take(indices)

    rows = Counted([tmp_path / f"part-{i}.npy" for i in range(5)])
    pick = np.array([0, 3, 4, 5, 11, 12, 13, 20, 24])
    for batches, expected in (
        (batches_of(rows, 4), [whole[s : s + 4] for s in range(0, 25, 4)]),
        (batches_of(rows, 4, rows=pick), [whole[pick][s : s + 4] for s in range(0, 9, 4)]),
    ):
        reads.clear()
        assert total_images(batches) == sum(len(b) for b in expected) and reads == []
        for got, want in zip(batches, expected, strict=True):
            assert reads == [len(want)]  # this batch alone has been read
            np.testing.assert_array_equal(got, want)
            reads.clear()


def test_check_images_spread_a_fixed_subset_over_the_split() -> None:
    images = np.arange(1000, dtype=np.uint8).reshape(1000, 1, 1, 1).repeat(3, axis=3) % 251
    subset = check_images(images)
    assert subset.shape == (CHECK_IMAGES, 3, 1, 1)
    first, last = to_model_range(images[[0, -1]])
    assert torch.equal(subset[0], first) and torch.equal(subset[-1], last)


def test_latent_shards_round_trip_with_the_statistics_of_all_latents(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    scale, shift = torch.tensor([1, 2, 0.5, 1]), torch.tensor([0, 1, -2, 0.3])
    z = torch.randn(23, 4, 3, 3, generator=g) * scale[:, None, None] + shift[:, None, None]
    latents, labels = z.numpy(), np.arange(23) % 4  # (23, C, h, w), (23,)
    writer = LatentShardWriter(tmp_path, shard_size=5)
    bounds = [0, 7, 9, 16, 23]  # batches that do not line up with the shards
    for start, stop in zip(bounds, bounds[1:], strict=False):
        writer.add(latents[start:stop], labels[start:stop])
    meta = writer.close()
    assert meta["count"] == 23 and meta["shape"] == [4, 3, 3] and meta["dtype"] == "float16"
    assert [s["count"] for s in meta["shards"]] == [5, 5, 5, 5, 3]
    rows, read_labels = open_latents(tmp_path, meta)
    assert len(rows) == 23 and rows.shape == (23, 4, 3, 3)
    every = rows[torch.arange(23)]
    assert every.dtype == torch.float32
    torch.testing.assert_close(every, torch.from_numpy(latents), rtol=1e-3, atol=1e-3)
    assert torch.equal(read_labels, torch.from_numpy(labels))
    assert torch.equal(rows[4:7], every[4:7]) and torch.equal(rows[-1], every[-1])
    stored = every.double().numpy()
    np.testing.assert_allclose(meta["channel_mean"], stored.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(meta["channel_std"], stored.std(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(meta["channel_mean"], latents.mean(axis=(0, 2, 3)), atol=2e-3)

    with pytest.raises(DataError, match="ldm encode --variant v"):
        open_latents(tmp_path, {"variant": "v", "count": 23})  # meta.json without shards
    with pytest.raises(DataError, match="counts 24 latents"):
        open_latents(tmp_path, meta | {"count": 24, "variant": "v"})


def test_training_on_latent_shards_gives_the_weights_of_training_in_memory(
    tmp_path: Path,
) -> None:
    writer = LatentShardWriter(tmp_path / "latents", shard_size=5)  # 12 latents in 3 shards
    writer.add(LATENTS.numpy(), LABELS.numpy())
    latents, labels = open_latents(tmp_path / "latents", writer.close())

    on_disk = make_run(tmp_path / "a", 5)
    on_disk.latents, on_disk.labels = latents, labels
    in_memory = make_run(tmp_path / "b", 5)
    in_memory.latents, in_memory.labels = LATENTS.half().float(), LABELS  # the stored values
    for r in (on_disk, in_memory):
        fit_diffusion(r, NullTracker(), lambda n, **_: None)
    assert_same_weights(on_disk.model, in_memory.model, rtol=0, atol=0)
    assert_same_weights(on_disk.ema, in_memory.ema, rtol=0, atol=0)
