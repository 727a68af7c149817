"""The report's table of why each variant's latent space generates as it does: the latent
diagnostics `evaluate` records (`ldm.records.LatentDiagnostics`) beside the tokenizer's CKA,
with a sentence per column on how to read it. Variants whose records predate the diagnostics
are left out; without any, there is no table."""

from __future__ import annotations

from ldm.records import EvaluateRecord, Interval
from ldm.report.summary import ABSENT, fmt
from ldm.report.text import escape, percent, table


def _number(value: float, interval: Interval | None, spread: float | None) -> str:
    """`189 ± 2.1 [180..195]`: the number, its spread over seeds and its interval, as known."""
    text = fmt(value)
    if spread is not None:
        text += f" ± {fmt(spread)}"
    if interval is not None:
        text += f" [{fmt(interval.lo)}..{fmt(interval.hi)}]"
    return text


def _share(value: float, spread: float | None) -> str:
    return percent(value) + ("" if spread is None else f" ± {percent(spread)}")


def diagnostics_section(records: list[EvaluateRecord]) -> str:
    shown = [r for r in records if r.diagnostics is not None]
    if not shown:
        return ""
    first = shown[0].diagnostics
    sigmas = sorted({s for r in shown for s in r.diagnostics.noisy_rfd}, key=float)
    foundations = {r.tokenizer.cka_foundation for r in shown}
    one_foundation = len(foundations) == 1
    columns = [
        "variant",
        "HF share, latents",
        "HF share, images",
        "channel std (min..max)",
        "max \\|channel mean\\|",
        *[f"rFD σ = {s}" for s in sigmas],
        f"CKA ({escape(next(iter(foundations)))})" if one_foundation else "CKA",
    ]
    rows = []
    for r in shown:
        d, spread = r.diagnostics, r.seed_spread or {}
        noisy = [
            _number(d.noisy_rfd[s], d.noisy_rfd_intervals.get(s), spread.get(f"noisy_rfd/{s}"))
            if s in d.noisy_rfd
            else ABSENT
            for s in sigmas
        ]
        cka = fmt(r.tokenizer.cka, 2)
        rows.append(
            [
                r.variant,
                _share(d.latent_high_frequency, spread.get("latent_high_frequency")),
                _share(d.image_high_frequency, None),
                f"{fmt(min(d.channel_std))}..{fmt(max(d.channel_std))}",
                fmt(max(abs(m) for m in d.channel_mean)),
                *noisy,
                cka if one_foundation else f"{cka} ({escape(r.tokenizer.cka_foundation)})",
            ]
        )
    level = shown[0].uncertainty.level if shown[0].uncertainty else None
    seeds = any(r.seed_count > 1 for r in shown)
    return "\n".join(
        [
            "## Why a latent space generates as it does",
            "",
            table(columns, rows),
            "",
            "Measured by each variant's evaluation on the validation images"
            + (f"; [lo..hi] is a {percent(level)} bootstrap interval" if level else "")
            + (
                "; with several seeds, ± is the spread over them, the intervals widened by it, "
                "and the channel columns the seeds' sorted channels averaged rank by rank"
                if seeds
                else ""
            )
            + ".",
            "",
            f"- **HF share** is the share of spectral energy (2-D DCT per channel, the mean "
            f"left out) at or above {percent(first.frequency_cut)} of the highest frequency a "
            "map can hold, latents and images on the same scale: latents with more high-frequency "
            "energy than the images carry detail the pixels do not have, which a diffusion "
            "model must still learn to generate.",
            "- **channel std** is the spread of each latent channel before the tokenizer's "
            "normalisation: a channel far narrower than the others carries little, and "
            "normalising it to unit spread hands the generator mostly its noise.",
            "- **max |channel mean|** is the largest offset of a channel's mean from 0: an "
            "offset large next to that channel's std marks a channel that is nearly constant: "
            "it costs the generator a dimension and carries little.",
            f"- **rFD σ** is the FD ({escape(first.feature_net)}) against the validation images "
            "of images decoded from their latents plus Gaussian noise of σ channel spreads "
            "(σ = 0: the plain reconstruction): rFD rising steeply with σ means the decoder is "
            "fragile to the errors a generator makes, a flat one that it forgives them.",
            "- **CKA** is the linear CKA between the latents and the foundation model's "
            "features, measured when the tokenizer was trained: higher means a latent space "
            "organised like the foundation model's, which VA-VAE ties to faster, better "
            "generation.",
        ]
    )
