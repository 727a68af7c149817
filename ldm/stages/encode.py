"""The encode stage: a variant's latents of the train split and its mirror image, cached once.

Latents are stored already normalised by the tokenizer's own statistics (`Tokenizer.encode`), so
no later stage applies a latent scale by hand.
"""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING

from ldm.config import Config
from ldm.devices import pick_device
from ldm.paths import Paths
from ldm.progress import progress_bar
from ldm.stages.inputs import released_tokenizer
from ldm.stages.result import StageResult
from ldm.tracking import Tracker

if TYPE_CHECKING:
    import numpy as np


def encode(cfg: Config, paths: Paths, tracker: Tracker, variant: str) -> StageResult:
    """Encode the prepared train split and its mirror image once; store latents and labels."""
    import numpy as np
    import torch

    from ldm.data.batches import to_model_range
    from ldm.data.prepare import load_split

    device = pick_device(cfg.tokenizer.device)
    model = released_tokenizer(paths, variant).to(device)
    images, labels = load_split(paths.prepared, "train")
    batch = cfg.evaluate.batch_size
    chunks: list[np.ndarray] = []
    with (
        progress_bar(f"encode@{variant}", 2 * len(images), images_per_unit=1) as advance,
        torch.no_grad(),
    ):
        for flip in (False, True):  # the mirror images double the data for free
            for start in range(0, len(images), batch):
                x = to_model_range(images[start : start + batch]).to(device)
                z = model.encode(x.flip(-1) if flip else x)  # (B, d, h, w), normalised
                chunks.append(z.float().cpu().numpy())
                advance(len(x))
    latents = np.concatenate(chunks)  # (2N, d, h, w)
    all_labels = np.concatenate([labels, labels]).astype(np.int64)
    mean, std = latents.mean(axis=(0, 2, 3)), latents.std(axis=(0, 2, 3))
    meta = json.loads((paths.prepared / "meta.json").read_text())
    out = paths.latents(variant)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "latents.npy", latents.astype(np.float32), allow_pickle=False)
    np.save(tmp / "labels.npy", all_labels, allow_pickle=False)
    (tmp / "meta.json").write_text(
        json.dumps(
            {
                "variant": variant,
                "count": len(latents),
                "shape": list(latents.shape[1:]),
                "num_classes": meta["num_classes"],
                "class_map": meta["class_map"],
                "channel_mean": mean.tolist(),
                "channel_std": std.tolist(),
            },
            indent=2,
            sort_keys=True,
        )
        + "\n"
    )
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    # After the tokenizer's own normalisation these should be near 0 and 1: a check, not a fix.
    metrics = {
        "n_latents": float(len(latents)),
        "latent_mean_abs_max": float(abs(mean).max()),
        "latent_std_min": float(std.min()),
        "latent_std_max": float(std.max()),
    }
    return StageResult(metrics, [out / "meta.json"])
