"""Measuring images and feature sets: torch and numpy functions, no networks of their own.

- `pixels`: PSNR and SSIM per image.
- `frechet`: Frechet distance of feature sets, overall and per class; fast and exact from the
  rows when there are fewer rows than dimensions, and draw after draw for resampling.
- `bootstrap`: bootstrap standard errors and intervals of an FD and of a paired difference.
- `manifold`: precision, recall, density and coverage (k-NN manifold estimates).
- `uncertainty`: bootstrap intervals of every generation metric (one shared val resample per
  draw, PRDC radii from a draw's distinct rows), KID, and FD extrapolated to N → ∞ (FD∞).
- `extract`: features of many images, batch by batch, through a frozen `FeatureNet`.

The networks themselves live in `ldm.pretrained`.
"""
