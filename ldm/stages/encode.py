"""The encode stage: a cell's latents of the train split and its mirror image, cached once.

Images are read and latents written a batch at a time (`data/latents/<cell>/latents-NNNNN.npy`,
labels-NNNNN.npy and meta.json, see `ldm.data.latents`), so memory does not grow with the data.

Latents are stored already normalised by the tokenizer's own statistics (`Tokenizer.encode`), so
no later stage applies a latent scale by hand.
"""

from __future__ import annotations

import json
import shutil

from ldm.config import Config
from ldm.files import swap_in
from ldm.paths import Paths, split_cell
from ldm.progress import progress_bar
from ldm.stages.inputs import released_tokenizer
from ldm.stages.result import StageResult
from ldm.tracker import Tracker
from ldm.training.devices import pick_device


def encode(cfg: Config, paths: Paths, tracker: Tracker, cell: str) -> StageResult:
    """Encode the prepared train split and its mirror image once; store latents and labels."""
    import numpy as np
    import torch

    from ldm.data.batches import to_model_range
    from ldm.data.latents import LatentShardWriter
    from ldm.data.prepare import load_split

    device = pick_device(cfg.tokenizer.device)
    model = released_tokenizer(paths, cell).to(device)
    images, labels = load_split(paths.prepared, "train")  # read batch by batch
    batch = cfg.evaluate.batch_size
    out = paths.latents(cell)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # Latents go to disk a shard at a time: memory holds one batch and one shard, whatever N.
    writer = LatentShardWriter(tmp, cfg.prepare.shard_size)
    with (
        progress_bar(f"encode@{cell}", 2 * len(images), images_per_unit=1) as advance,
        torch.no_grad(),
    ):
        for flip in (False, True):  # the mirror images double the data for free
            for start in range(0, len(images), batch):
                x = to_model_range(images[start : start + batch]).to(device)
                z = model.encode(x.flip(-1) if flip else x)  # (B, d, h, w), normalised
                writer.add(z.float().cpu().numpy(), labels[start : start + batch])
                advance(len(x))
    written = writer.close()
    meta = json.loads((paths.prepared / "meta.json").read_text())
    classes = {"num_classes": meta["num_classes"], "class_map": meta["class_map"]}
    variant, seed = split_cell(cell)
    cell_meta = {"variant": variant, "seed": seed}
    text = json.dumps(cell_meta | classes | written, indent=2, sort_keys=True)
    (tmp / "meta.json").write_text(text + "\n")
    swap_in(tmp, out)  # the old latents stay whole until these are (dvc.yaml: persist)
    mean, std = np.array(written["channel_mean"]), np.array(written["channel_std"])
    # After the tokenizer's own normalisation these should be near 0 and 1: a check, not a fix.
    metrics = {
        "n_latents": float(written["count"]),
        "latent_mean_abs_max": float(abs(mean).max()),
        "latent_std_min": float(std.min()),
        "latent_std_max": float(std.max()),
    }
    return StageResult(metrics, [out / "meta.json"])
