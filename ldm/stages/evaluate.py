"""The evaluate stage: one cell's generator (a variant, one seed) measured, between a floor and
a ceiling.

- guidance: of `evaluate.cfg_scales`, the scale whose samples come closest to the train split;
- generation: `evaluate.num_samples` class-balanced samples from fixed noise, at that scale,
  against the val split: FD, precision, recall, density, coverage, and FD per class;
- reference lines, with the same network and sample sizes: the train split against the val
  split (what a perfect generator scores) and decoded N(0, I) latents (what an untrained one
  scores), so every FD reads between them;
- the tokenizer's reconstruction quality, as `train_tokenizer@<cell>` measured it, and why its
  latent space generates as it does: spectrum, channel statistics, rFD under latent noise
  (ldm/stages/diagnostics.py);
- speed of sampling, encoding and decoding, and the cell's whole cost, shared stages included.
Written as `data/metrics/evaluate@<cell>.json` (`ldm.records.EvaluateRecord`). Every cell draws
the same noise and labels (evaluate.seed): row j of two cells' samples is paired.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ldm.config import Config, EvaluateConfig
from ldm.errors import DataError
from ldm.paths import Paths, cell_options, split_cell
from ldm.records import (
    EvaluateRecord,
    GenerationQuality,
    Interval,
    ReferenceLines,
    SamplingSpeed,
    StageCost,
    Uncertainty,
    VariantCost,
    total_cost,
)
from ldm.stages.codec import DecodedLatents, decode_batch
from ldm.stages.diagnostics import latent_diagnostics
from ldm.stages.inputs import released_tokenizer
from ldm.stages.kept_features import reference_features
from ldm.stages.result import StageResult
from ldm.stages.upstream import cell_costs, tokenizer_quality
from ldm.tracker import Tracker
from ldm.training.devices import pick_device

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ldm.metrics.bootstrap import Estimate

GRID_PER_CLASS = 8  # samples per class row in the logged grid


def evaluate(cfg: Config, paths: Paths, tracker: Tracker, cell: str) -> StageResult:
    import numpy as np
    import torch
    from PIL import Image

    from ldm.data.prepare import load_split
    from ldm.generate import image_grid, load_diffusion
    from ldm.metrics.extract import batches_of, extract_features
    from ldm.metrics.frechet import frechet_distance_per_class
    from ldm.pretrained.features import load_eval_features

    ev, sc = cfg.evaluate, cfg.sample
    variant, seed = split_cell(cell)
    device = pick_device(cfg.diffusion.device)
    tokenizer = released_tokenizer(paths, cell).to(device)
    if not (paths.diffusion(cell) / "model.safetensors").is_file():
        raise DataError(
            f"{paths.diffusion(cell)} holds no trained generator: run "
            f"`ldm train-diffusion {cell_options(cell)}` first"
        )
    model, config = load_diffusion(paths.diffusion(cell))
    model.to(device)
    class_names = sorted(config["class_map"], key=config["class_map"].get)
    net = load_eval_features(ev.features, paths.local(ev.features_weights), ev.features_sha256)
    net = net.to(device)
    n = ev.num_samples

    val_images, _ = load_split(paths.prepared, "val")  # the diagnostics, the encoder's speed
    val, val_labels = reference_features(paths, "val", net.name)
    train, _ = reference_features(paths, "train", net.name)

    generator = torch.Generator(device).manual_seed(ev.seed)
    noise = torch.randn((n, *tokenizer.latent_shape), generator=generator, device=device)
    untrained = extract_features(net, batches_of(DecodedLatents(tokenizer, noise), sc.batch_size))

    labels = torch.arange(n) % model.num_classes if model.num_classes else None
    scale, selection = choose_guidance(model, tokenizer, net, labels, cfg, device, train)
    generated, shown, timing = generate_and_measure(
        model,
        tokenizer,
        net,
        labels,
        cfg,
        device,
        scale,
        "generate and measure",
        MEASUREMENT_STREAM,
    )
    diagnostics, reconstructed, encode_seconds = latent_diagnostics(
        tokenizer, net, val_images, val, ev, device
    )

    # The features stay with the evaluation (the report resamples them; no network reruns).
    paths.evaluation(cell).mkdir(parents=True, exist_ok=True)
    np.savez(
        paths.evaluation(cell) / "features.npz",
        generated=generated,
        labels=np.zeros(0) if labels is None else labels.numpy(),
        untrained=untrained,
        reconstructed=reconstructed,  # row i: val image i, as data/reference/val.npz's rows
        network=np.array(net.name),
    )
    estimates, kid_mean, kid_std, fd_inf = uncertainty_of(val, generated, train, untrained, ev)
    fd = estimates["fd"].point
    per_class, per_class_intervals = None, None
    if model.num_classes:
        per_class = frechet_distance_per_class(
            val, val_labels, generated, labels.numpy(), class_names
        )
        per_class_intervals = class_intervals(
            val, val_labels, generated, labels.numpy(), class_names, ev
        )
    Image.fromarray(image_grid(shown, columns=GRID_PER_CLASS)).save(
        paths.evaluation(cell) / "samples.png"
    )
    generation = GenerationQuality(
        feature_net=net.name,
        num_samples=n,
        fd=fd,
        cfg_scale=scale,
        cfg_selection=selection,
        fd_infinity=fd_inf,
        kid=kid_mean,
        kid_std=kid_std,
        **{name: estimates[name].point for name in ("precision", "recall", "density", "coverage")},
        nearest_k=ev.nearest_k,
        fd_per_class=per_class,
    )
    reference = ReferenceLines(
        feature_net=net.name,
        fd_train_val=estimates["fd_train_val"].point,
        fd_random_latents=estimates["fd_random_latents"].point,
    )
    uncertainty = Uncertainty(
        draws=ev.bootstrap.draws,
        level=ev.bootstrap.level,
        seed=ev.bootstrap.seed,
        intervals={name: as_interval(e) for name, e in estimates.items()},
        per_class=per_class_intervals,
    )
    speed = SamplingSpeed(
        solver=sc.solver,
        steps=sc.steps,
        cfg_scale=scale,
        device_kind="cpu" if device.type == "cpu" else torch.cuda.get_device_name(device),
        sample_images_per_second=n / (timing["sample"] + timing["decode"]),
        encode_images_per_second=len(val_images) / encode_seconds,
        decode_images_per_second=n / timing["decode"],
    )
    quality = tokenizer_quality(paths, cell)
    # Graded in a network its tokenizer was trained against: config.py refuses it unless allowed.
    # (Which networks those are changes only with the tokenizer, an input DVC already tracks.)
    self_graded = ev.allow_self_graded and ev.features in cfg.trained_against(variant)
    upstream = cell_costs(paths, cell)

    def document(own_metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
        """The record, completed with this stage's own cost once it is known."""
        stages = upstream | {f"evaluate@{cell}": StageCost.from_metrics(own_metrics)}
        total = total_cost(list(stages.values()))
        record = EvaluateRecord(
            variant=variant,
            seed=seed,
            tokenizer=quality,
            generation=generation,
            reference=reference,
            speed=speed,
            cost=VariantCost(total=total, stages=stages),
            self_graded=self_graded,
            uncertainty=uncertainty,
            diagnostics=diagnostics,
        )
        own = {k: v for k, v in own_metrics.items() if isinstance(v, int | float)}
        return record.model_dump(), record.metrics() | own

    summary = {
        "fd": fd,
        "fd_train_val": reference.fd_train_val,
        "fd_random_latents": reference.fd_random_latents,
    }
    return StageResult(summary, [paths.evaluation(cell)], document=document)


FD_INFINITY_DRAWS = 10  # random subsets of the generated set per size behind FD∞


def uncertainty_of(
    val: np.ndarray,
    generated: np.ndarray,
    train: np.ndarray,
    untrained: np.ndarray,
    ev: EvaluateConfig,
) -> tuple[dict[str, Estimate], float, float, float]:
    """(every generation number with its bootstrap interval, KID's mean and spread, FD∞)."""
    from ldm.metrics.bootstrap import Resampling
    from ldm.metrics.uncertainty import (
        FD_INFINITY_FRACTIONS,
        KID_SUBSETS,
        fd_infinity,
        generation_estimates,
        kid,
    )
    from ldm.progress import progress_bar

    b = ev.bootstrap
    with progress_bar("bootstrap intervals", b.draws) as advance:
        estimates = generation_estimates(
            val,
            generated,
            train,
            untrained,
            ev.nearest_k,
            Resampling(b.draws, b.level, b.seed),
            advance,
        )
    kid_mean, kid_std = kid(val, generated, KID_SUBSETS, ev.kid_subset_size, b.seed)
    fd_inf = fd_infinity(val, generated, FD_INFINITY_FRACTIONS, FD_INFINITY_DRAWS, b.seed)
    return estimates, kid_mean, kid_std, fd_inf.value


# The noise streams of evaluate.seed: the measured images, and those that choose the guidance.
# Apart, so that no image that chose a scale is then measured at it (a choice that saw the
# measured images would flatter them).
MEASUREMENT_STREAM, SELECTION_STREAM = 2, 3


def choose_guidance(
    model: torch.nn.Module,
    tokenizer: Any,
    net: torch.nn.Module,
    labels: torch.Tensor | None,
    cfg: Config,
    device: torch.device,
    train: np.ndarray,
) -> tuple[float, dict[str, float] | None]:
    """The guidance scale of `evaluate.cfg_scales` whose `evaluate.select_samples` images (the
    same noise and labels at every scale, other noise than the measured images') come closest
    to the TRAIN split, with each scale's FD. Chosen on train and other images, measured on
    val: a scale picked by the number it is then reported with would flatter it. An
    unconditional model has nothing to guide."""
    from ldm.metrics.frechet import frechet_distance_between

    ev = cfg.evaluate
    if labels is None:
        return 1.0, None
    if len(ev.cfg_scales) == 1:
        return ev.cfg_scales[0], None
    count = min(ev.select_samples, len(labels))
    found = {}
    for scale in ev.cfg_scales:
        rows, _, _ = generate_and_measure(
            model,
            tokenizer,
            net,
            labels[:count],
            cfg,
            device,
            scale,
            f"guidance {scale:g}",
            SELECTION_STREAM,
        )
        found[scale] = frechet_distance_between(train, rows)
    best = min(found, key=found.get)
    return best, {f"{scale:g}": fd for scale, fd in found.items()}


def as_interval(e: Estimate) -> Interval:
    return Interval(se=e.se, lo=e.lo, hi=e.hi, bias=e.bias)


def class_intervals(
    val: np.ndarray,
    val_labels: np.ndarray,
    generated: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    ev: EvaluateConfig,
) -> dict[str, Interval]:
    """Each class's gFD interval (`evaluate.bootstrap`, each class resampled on its own)."""
    from ldm.metrics.bootstrap import Resampling, bootstrap_fd_per_class

    b = ev.bootstrap
    resampling = Resampling(b.draws, b.level, b.seed)
    found = bootstrap_fd_per_class(val, val_labels, generated, labels, class_names, resampling)
    return {name: as_interval(e) for name, e in found.items()}


def generate_and_measure(
    model: torch.nn.Module,
    tokenizer: Any,
    net: torch.nn.Module,
    labels: torch.Tensor | None,
    cfg: Config,
    device: torch.device,
    guidance: float,
    description: str,
    stream: int,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Features of one generated image per label (`evaluate.num_samples` of them), a few per
    class for the grid, and the seconds spent sampling and decoding. Batch by batch: at 256 px,
    50,000 images would not fit in memory. Batch k draws its noise from (evaluate.seed, k,
    stream), so the same settings give the same images."""
    import numpy as np
    import torch

    from ldm.data.batches import to_uint8
    from ldm.diffusion.sample import sample
    from ldm.progress import progress_bar
    from ldm.seeds import stream_seed

    sc = cfg.sample
    n = cfg.evaluate.num_samples if labels is None else len(labels)
    features, shown, timing = [], [], {"sample": 0.0, "decode": 0.0}
    wanted = {c: GRID_PER_CLASS for c in range(max(1, model.num_classes))}
    with progress_bar(description, n, images_per_unit=1) as advance:
        for k, start in enumerate(range(0, n, sc.batch_size)):
            stop = min(start + sc.batch_size, n)
            chunk_labels = None if labels is None else labels[start:stop]
            generator = torch.Generator(device).manual_seed(
                stream_seed(cfg.evaluate.seed, k, stream)
            )
            started = time.perf_counter()
            latents = sample(
                model,
                (stop - start, *tokenizer.latent_shape),
                None if chunk_labels is None else chunk_labels.to(device),
                sc.steps,
                sc.solver,
                guidance,
                tuple(sc.cfg_interval),
                sc.shift,
                generator,
                sc.batch_size,
            )
            timing["sample"] += time.perf_counter() - started
            started = time.perf_counter()
            images = decode_batch(tokenizer, latents)  # on the CPU: the device has finished
            timing["decode"] += time.perf_counter() - started
            with torch.no_grad():
                features.append(net(images.to(device)).double().cpu().numpy())
            pictures = to_uint8(images)  # (b, H, W, 3)
            for i, label in enumerate([0] * len(images) if chunk_labels is None else chunk_labels):
                if wanted[int(label)] > 0:
                    wanted[int(label)] -= 1
                    shown.append((int(label), pictures[i]))
            advance(stop - start)
    shown.sort(key=lambda item: item[0])  # a class per row
    return np.concatenate(features), np.stack([p for _, p in shown]), timing
