"""The train_diffusion stage: LightningDiT on one cell's cached latents.

Samples logged during training are decoded by the cell's own tokenizer, which owns its latent
scale. A cell `<variant>-<seed>` trains with diffusion.seed + its seed (the initial weights and
every draw of the loop); the curve's samples keep sample.seed, the same noise in every cell.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from typing import TYPE_CHECKING

from ldm.config import Config
from ldm.cost import Clock
from ldm.errors import DataError
from ldm.files import write_json_atomic
from ldm.paths import Paths, cell_options, split_cell
from ldm.progress import notice, progress_bar
from ldm.stages.inputs import released_tokenizer
from ldm.stages.result import StageResult
from ldm.tracker import Tracker
from ldm.training.devices import pick_device

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ldm.diffusion.probe import ConvergenceProbe
    from ldm.tokenizer.model import Tokenizer


# Settings that change how a run goes, not what it computes: a run resumes across changes to
# them (raising `steps` extends it, on the schedule `ldm.training.schedule` describes). Any other
# change restarts it, keeping the old state aside.
# micro_batch_size only splits the same global batch into gradient-accumulation pieces.
RESUMABLE_SETTINGS = frozenset(
    {
        "steps",
        "micro_batch_size",
        "checkpoint_every",
        "sample_every",
        "curve_samples",
        "on_non_finite",
        "device",
        "world_size",
        "precision",
        "compile",
    }
)
# Bootstrap draws behind each curve point's interval, fewer than `evaluate.bootstrap.draws`:
# they run inside training, at every sample step. A draw resamples the val rows, so it costs
# about 1 ms at 500 val rows, 3 ms at 2,000 and 20 ms at 10,000 (1,280 dims). With 200 draws
# each end of a 90 % interval is placed to about 5 % of the interval's width (one s.e.).
CURVE_DRAWS = 200
# Train subsets averaged into the curve's floor, measured once per run: the mean of 20 has a
# standard error of about a fifth of one subset's spread, small beside a point's interval.
FLOOR_SUBSETS = 20


def train_diffusion(cfg: Config, paths: Paths, tracker: Tracker, cell: str) -> StageResult:
    """Train LightningDiT on one cell's latents; release the EMA weights."""
    clock = Clock()  # this attempt's hours, from its start: its resume points keep them
    import torch

    from ldm.data.latents import open_latents
    from ldm.diffusion import create_model
    from ldm.diffusion.train import DiffusionRun, fit_diffusion
    from ldm.records import ConvergenceCurve
    from ldm.training import checkpoint
    from ldm.training.distributed import cleanup, init_distributed

    variant, seed = split_cell(cell)
    diff = cfg.diffusion.model_copy(update={"seed": cfg.diffusion.seed + seed})
    folder = paths.latents(cell)
    if not (folder / "meta.json").is_file():
        raise DataError(f"{folder} holds no latents: run `ldm encode {cell_options(cell)}` first")
    meta = json.loads((folder / "meta.json").read_text())
    latents, labels = open_latents(folder, meta)  # memory-mapped shards, read a batch per step
    # One class is an unconditional model: a label embedding would have nothing to tell apart.
    num_classes = meta["num_classes"] if meta["num_classes"] > 1 else 0
    recipe, resumable = checkpoint.split_settings(
        "diffusion", cfg.section("diffusion") | {"seed": diff.seed}, RESUMABLE_SETTINGS
    )
    device = pick_device(diff.device)
    dist = init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    torch.manual_seed(diff.seed)
    channels, size = meta["shape"][0], meta["shape"][1]
    model = create_model(
        diff.model,
        channels,
        size,
        num_classes,
        swiglu=diff.swiglu,
        rmsnorm=diff.rmsnorm,
        rope=diff.rope,
        qk_norm=diff.qk_norm,
        class_dropout=diff.class_dropout,
    )
    tokenizer = released_tokenizer(paths, cell).to(device)
    run = DiffusionRun(
        model=model,
        cfg=diff,
        sample_cfg=cfg.sample,
        latents=latents,
        labels=labels,
        num_classes=num_classes,
        work_dir=paths.work(f"train_diffusion@{cell}"),
        identity={
            "architecture": model.config,
            "latents (the tokenizer and the data)": meta,
            **recipe,
        },
        settings=resumable | {"sample": cfg.section("sample")},  # the sampler draws grids only
        device=device,
        dist=dist,
        decode=tokenizer.decode,
        notice=notice,
        clock=clock,
    )
    if dist.is_main:  # rank 0 alone samples and measures
        run.probe = convergence_probe(cfg, paths, tokenizer, num_classes, device)
    try:
        alone = checkpoint.exclusive(run.work_dir) if dist.is_main else nullcontext()
        bar = (  # one bar for the run, not one per rank
            progress_bar(f"train_diffusion@{cell}", diff.steps, images_per_unit=diff.batch_size)
            if dist.is_main
            else nullcontext(lambda n, **_: None)
        )
        with alone, bar as advance:
            metrics = fit_diffusion(run, tracker, advance)
        if dist.is_main:
            checkpoint.save_release(
                paths.diffusion(cell),
                run.ema,
                {
                    "model": model.config,
                    "variant": variant,
                    "seed": diff.seed,
                    "class_map": meta["class_map"],
                    "tokenizer": str(paths.tokenizer(cell).relative_to(paths.root)),
                    "steps": diff.steps,
                    "ema_decay": diff.ema_decay,
                },
            )
            curve = ConvergenceCurve(
                variant=variant,
                seed=seed,
                feature_net=cfg.evaluate.features,
                compute_unit="gpu_hours" if device.type == "cuda" else "cpu_hours",
                num_samples=diff.curve_samples,
                points=run.probe.points,
                floor=run.probe.floor,
                interval_level=run.probe.resampling.level,
                cfg_scale=cfg.sample.cfg_scale if num_classes else 1.0,
            )
            write_json_atomic(paths.convergence(cell), curve.model_dump())
    finally:
        cleanup()
    return StageResult(metrics, [paths.diffusion(cell) / "config.json"], carried=run.carried)


def convergence_probe(
    cfg: Config, paths: Paths, tokenizer: Tokenizer, num_classes: int, device: torch.device
) -> ConvergenceProbe:
    """FD of a fixed set of EMA samples against the val split, in evaluate.features space,
    with its bootstrap interval; and the floor at the same sample count, measured once."""

    from ldm.diffusion.probe import ConvergenceProbe
    from ldm.metrics.bootstrap import Resampling
    from ldm.metrics.extract import batches_of, extract_features
    from ldm.metrics.frechet import metric_name
    from ldm.metrics.uncertainty import mean_fd_of_subsets
    from ldm.pretrained.features import load_eval_features
    from ldm.stages.kept_features import reference_features

    ev, size = cfg.evaluate, cfg.diffusion.curve_samples
    net = load_eval_features(ev.features, paths.local(ev.features_weights), ev.features_sha256)
    net = net.to(device)
    val = reference_features(paths, "val", net.name)[0]
    train = reference_features(paths, "train", net.name)[0]
    if size > len(train):
        raise DataError(
            f"diffusion.curve_samples is {size}, more than the {len(train)} training images the "
            "curve's floor is measured on: lower it"
        )
    floor = mean_fd_of_subsets(val, train, size, FLOOR_SUBSETS, ev.bootstrap.seed)

    def features(images: torch.Tensor) -> np.ndarray:  # [-1, 1] (N, 3, H, W) -> (N, D)
        return extract_features(net, batches_of(images, ev.batch_size))

    return ConvergenceProbe(
        features=features,
        reference=val,
        resampling=Resampling(CURVE_DRAWS, ev.bootstrap.level, ev.bootstrap.seed),
        floor=floor,
        metric=f"curve/{metric_name(net.name)}",
        num_samples=size,
        num_classes=num_classes,
        latent_shape=tokenizer.latent_shape,
        sample_cfg=cfg.sample,
        decode=tokenizer.decode,
        device=device,
    )
