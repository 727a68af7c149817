"""The reference stage: the real images' features, measured once for every variant.

- `data/reference/val.npz`: features (and labels) of the whole val split in `evaluate.features`
  space: what every FD of the trial is measured against (reconstructions, the convergence
  curve, generated samples);
- `data/reference/train.npz`: features of `evaluate.num_samples` train images (a fixed draw),
  whose FD to the val split is the floor every generator is read against (`fd_train_val`).
Two files, so that a change to the evaluation's sample count reruns evaluation, not training.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ldm.config import Config
from ldm.errors import DataError
from ldm.paths import Paths
from ldm.stages.result import StageResult
from ldm.tracker import Tracker

if TYPE_CHECKING:
    import numpy as np


def reference(cfg: Config, paths: Paths, tracker: Tracker) -> StageResult:
    import numpy as np

    from ldm.data.prepare import load_split
    from ldm.metrics.extract import batches_of, extract_features
    from ldm.metrics.frechet import frechet_distance_between
    from ldm.pretrained.features import load_eval_features
    from ldm.training.devices import pick_device

    if not (paths.prepared / "meta.json").is_file():
        raise DataError(f"{paths.prepared / 'meta.json'} not found: run `ldm prepare` first")
    ev = cfg.evaluate
    net = load_eval_features(ev.features, paths.local(ev.features_weights), ev.features_sha256)
    net = net.to(pick_device(cfg.diffusion.device))
    # Shards, read a batch at a time: memory does not grow with the split.
    val_images, val_labels = load_split(paths.prepared, "val")
    train_images, train_labels = load_split(paths.prepared, "train")
    pick = np.sort(np.random.default_rng(ev.seed).permutation(len(train_images))[: ev.num_samples])
    val = extract_features(net, batches_of(val_images, ev.batch_size))
    train = extract_features(net, batches_of(train_images, ev.batch_size, rows=pick))
    out = paths.reference
    out.mkdir(parents=True, exist_ok=True)
    save_features(out / "val.npz", val, np.asarray(val_labels), net.name)
    save_features(out / "train.npz", train, np.asarray(train_labels)[pick], net.name)
    metrics = {
        "fd_train_val": frechet_distance_between(val, train),
        "n_val": float(len(val)),
        "n_train": float(len(train)),
    }
    return StageResult(metrics, [])


def save_features(path: Path, features: np.ndarray, labels: np.ndarray, network: str) -> None:
    """(N, D) float64 features and their labels, written whole (temp file, then rename)."""
    import os

    import numpy as np

    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, features=features, labels=labels, network=np.array(network))
    os.replace(tmp, path)
