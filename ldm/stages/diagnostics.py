"""Why a latent space generates as it does: what `evaluate` measures of a cell's tokenizer on the
val split, beside the CKA `train_tokenizer` measured (`ldm.records.LatentDiagnostics`).

- the share of spectral energy at high frequency in the raw latents, against the same share in
  the images (ldm/metrics/spectrum.py): energy the images do not have is detail a diffusion
  model must learn for nothing;
- each channel's mean and standard deviation of the val split's raw posterior means (before
  the tokenizer's normalisation; the train split's, which the normalisation uses, differ by
  sampling noise): a channel of tiny spread carries little, a large offset is what the
  normalisation has to remove;
- rFD of Dec(z + σε) for σ in `NOISE_SIGMAS`, z the normalised posterior mean (what `decode`
  takes and the DiT learns), ε one draw per image shared by every σ: how fragile the decoder
  is to the errors a generator makes. Each with its paired bootstrap interval.

One pass over the val split: each batch is encoded once and decoded once per σ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ldm.config import EvaluateConfig
from ldm.errors import DataError
from ldm.records import Interval, LatentDiagnostics
from ldm.stages.codec import decode_batch

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ldm.data.shards import ShardedArray

# Latent noise in normalised units (the latents' per-channel std is 1): 0 is the plain
# reconstruction, 0.5 an error half a channel's spread, as a generator early in training makes.
# Three levels: each costs a decode and a feature pass of the val split (about 5 s at 32 px on
# a 2-core CPU), and 0.25 already shows whether the rFD bends up early or late.
NOISE_SIGMAS = (0.0, 0.25, 0.5)
# The stream of evaluate.seed the latent noise draws from: apart from the generated images'
# (evaluate.py's MEASUREMENT_STREAM and SELECTION_STREAM), so that neither shares its draws.
NOISE_STREAM = 4


def latent_diagnostics(
    tokenizer: Any,
    net: torch.nn.Module,
    val_images: np.ndarray | ShardedArray,
    val_features: np.ndarray,
    ev: EvaluateConfig,
    device: torch.device,
) -> tuple[LatentDiagnostics, np.ndarray, float]:
    """The diagnostics, the features of Dec(z) at σ = 0 (row i: val image i, as row i of
    `val_features`, which the reference stage extracted from the same split in the same order:
    `load_split` rows, batch by batch), and the seconds encoding the split took: the pass
    encodes every val image anyway, so the encoder's speed is timed here, not in a pass of its
    own."""
    import time

    import numpy as np
    import torch

    from ldm.data.batches import to_model_range
    from ldm.metrics.spectrum import HIGH_FREQUENCY_CUT, channel_energy, share_of_energy
    from ldm.progress import progress_bar
    from ldm.seeds import stream_seed

    n = len(val_images)
    if len(val_features) != n:
        raise DataError(
            f"the reference holds {len(val_features)} val rows but the val split has {n} "
            "images: run `ldm reference` again"
        )
    mean, std = (s.view(1, -1, 1, 1) for s in (tokenizer.latent_mean, tokenizer.latent_std))
    features: dict[float, list[np.ndarray]] = {sigma: [] for sigma in NOISE_SIGMAS}
    latent_energy, image_energy, sums, squares = 0.0, 0.0, 0.0, 0.0
    encode_seconds = 0.0
    with progress_bar("latent diagnostics", n * len(NOISE_SIGMAS), images_per_unit=1) as advance:
        for k, start in enumerate(range(0, n, ev.batch_size)):
            x = to_model_range(val_images[start : start + ev.batch_size])  # (B, 3, H, W)
            image_energy = image_energy + channel_energy(x.numpy())
            started = time.perf_counter()
            with torch.no_grad():
                raw = tokenizer.posterior(x.to(device)).mode()  # (B, d, h, w), unnormalised
            as_array = raw.double().cpu().numpy()  # waits for the device: the encode's end
            encode_seconds += time.perf_counter() - started
            latent_energy = latent_energy + channel_energy(as_array)
            sums = sums + as_array.sum(axis=(0, 2, 3))
            squares = squares + (as_array**2).sum(axis=(0, 2, 3))
            z = (raw - mean) / std  # as Tokenizer.encode normalises
            # batch k's noise from (evaluate.seed, k): the same ε whatever else ran before
            generator = torch.Generator(device).manual_seed(stream_seed(ev.seed, k, NOISE_STREAM))
            eps = torch.randn(z.shape, generator=generator, device=device)
            for sigma in NOISE_SIGMAS:
                images = decode_batch(tokenizer, z + sigma * eps)
                with torch.no_grad():
                    features[sigma].append(net(images.to(device)).double().cpu().numpy())
                advance(len(z))
    count = n * np.prod(tokenizer.latent_shape[1:])
    channel_mean = sums / count
    channel_std = np.sqrt(np.maximum(squares / count - channel_mean**2, 0.0))
    rows = {sigma: np.concatenate(found) for sigma, found in features.items()}
    points, intervals = noisy_rfd(val_features, rows, ev)
    diagnostics = LatentDiagnostics(
        frequency_cut=HIGH_FREQUENCY_CUT,
        latent_high_frequency=share_of_energy(latent_energy),
        image_high_frequency=share_of_energy(image_energy),
        channel_mean=channel_mean.tolist(),
        channel_std=channel_std.tolist(),
        noisy_rfd=points,
        noisy_rfd_intervals=intervals,
        feature_net=net.name,
    )
    return diagnostics, rows[0.0], encode_seconds


def noisy_rfd(
    val: np.ndarray, rows: dict[float, np.ndarray], ev: EvaluateConfig
) -> tuple[dict[str, float], dict[str, Interval]]:
    """Each σ's rFD against the val rows, with its paired bootstrap interval
    (`evaluate.bootstrap`; every σ draws the same rows, so the curve's steps share their noise),
    keyed by f"{σ:g}"."""
    from ldm.metrics.bootstrap import Resampling, bootstrap_fd
    from ldm.progress import progress_bar

    b = ev.bootstrap
    resampling = Resampling(b.draws, b.level, b.seed)
    points, intervals = {}, {}
    with progress_bar("noisy rFD intervals", len(rows)) as advance:
        for sigma, found in rows.items():
            e = bootstrap_fd(val, found, resampling, paired=True)
            points[f"{sigma:g}"] = e.point
            intervals[f"{sigma:g}"] = Interval(se=e.se, lo=e.lo, hi=e.hi, bias=e.bias)
            advance(1)
    return points, intervals
