"""The training loops as the paper preset runs them on a GPU: bf16 autocast, torch.compile and
channels-last, a few steps each; compiled and eager outputs agree within bf16's precision.

Skipped without CUDA; `bench/gpu_check.sh` runs them. They import nothing a bare GPU host lacks
besides pydantic (the config), which that script brings as a wheel.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ldm import config
from ldm.cost import CostMeter, device_of_this_process, gpu_energy_mj
from ldm.data.batches import ImageBatches, to_model_range
from ldm.diffusion.model import LightningDiT
from ldm.diffusion.train import DiffusionRun, fit_diffusion
from ldm.tokenizer.model import Tokenizer, TokenizerArch
from ldm.tokenizer.train import TrainRun, fit
from ldm.tracker import NullTracker
from ldm.training import checkpoint

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
FAST = {"precision": "bf16", "compile": True, "device": "cuda"}
# A small tokenizer with every block kind: two downsamples, attention at 8 px, the mid block.
ARCH = TokenizerArch(
    ch=32,
    ch_mult=(1, 2, 2),
    num_res_blocks=1,
    attn_resolutions=(8,),
    latent_channels=8,
    resolution=32,
)


def images(n: int, side: int, seed: int) -> np.ndarray:
    """n smooth random colour fields, uint8 (n, side, side, 3)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, side)
    x, y = np.meshgrid(ramp, ramp)
    planes = [np.stack([a * x, b * y, c * x * y], -1) for a, b, c in rng.uniform(0, 255, (n, 3))]
    return np.array(planes).astype(np.uint8)


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours.float() - reference.float()).norm() / reference.float().norm()).item()


def test_tokenizer_loop_trains_compiled_in_bf16_channels_last(tmp_path: Path) -> None:
    sets = FAST | {"channels_last": True, "steps": 6, "batch_size": 8, "warmup_steps": 1}
    sets |= {"eval_every": 3, "checkpoint_every": 3, "grid_images": 2, "perceptual": "none"}
    sets |= {"disc_weight": 0.5, "disc_start": 2}  # the PatchGAN and its adaptive weight too
    cfg = config.load(REPO / "params.yaml", [f"tokenizer.{k}={v}" for k, v in sets.items()])
    torch.manual_seed(0)
    run = TrainRun(
        model=Tokenizer(ARCH),
        cfg=cfg.tokenizer,
        steps=6,
        batches=ImageBatches(images(32, 32, 0), np.zeros(32, np.int64), 8, seed=0, hflip=True),
        val_images=to_model_range(images(4, 32, 1)),
        perceptual=None,
        alignment=None,
        work_dir=tmp_path,
        identity={},
        settings={},
        device=torch.device("cuda"),
    )
    history = fit(run, NullTracker(), lambda n, **_: None)
    assert math.isfinite(history["train/final_loss"]) and history["train/images_per_second"] > 0
    assert checkpoint.latest_state(tmp_path).name == "step-00000006"

    model = run.model.eval()
    x = run.val_images.cuda().contiguous(memory_format=torch.channels_last)  # (4, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
        eager = model(x, sample=False)[0]
        compiled = torch.compile(model)(x, sample=False)[0]
    assert torch.isfinite(compiled).all()
    assert relative_error(compiled, eager) < 2e-2


def test_dit_loop_trains_compiled_in_bf16(tmp_path: Path) -> None:
    sets = FAST | {"steps": 6, "batch_size": 16, "micro_batch_size": 8, "warmup_steps": 1}
    sets |= {"checkpoint_every": 3, "sample_every": 1000, "grad_clip": 1.0}
    overrides = [f"diffusion.{k}={v}" for k, v in sets.items()]
    cfg = config.load(REPO / "params.yaml", [*overrides, "sample.steps=2"])
    torch.manual_seed(0)
    model = LightningDiT(8, 8, 4, depth=2, width=128, heads=2, patch=1, class_dropout=0.1)
    g = torch.Generator().manual_seed(0)
    run = DiffusionRun(
        model=model,
        cfg=cfg.diffusion,
        sample_cfg=cfg.sample,
        latents=torch.randn(64, 8, 8, 8, generator=g),
        labels=torch.arange(64) % 4,
        num_classes=4,
        work_dir=tmp_path,
        identity={},
        settings={},
        device=torch.device("cuda"),
        notice=lambda _: None,
    )
    history = fit_diffusion(run, NullTracker(), lambda n, **_: None)
    assert math.isfinite(history["train/final_loss"]) and history["train/gpu_hours"] > 0

    net = run.model.eval()
    x = torch.randn(8, 8, 8, 8, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    t, y = torch.rand(8, device="cuda"), torch.arange(8, device="cuda") % 4
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
        eager = net(x, t, y)
        compiled = torch.compile(net)(x, t, y)
    assert torch.isfinite(compiled).all()
    assert relative_error(compiled, eager) < 2e-2


def test_cost_bills_the_gpu_by_name_and_reads_its_energy_where_nvml_is() -> None:
    prices = config.load(REPO / "params.yaml").cost
    with CostMeter(prices) as meter:
        a = torch.randn(4096, 4096, device="cuda")
        start = time.perf_counter()
        while time.perf_counter() - start < 1.0:  # long enough for NVML's counter to move
            a = torch.tanh(a @ a)
            torch.cuda.synchronize()
    metrics = meter.metrics(device_of_this_process())
    assert metrics["cost/device_kind"] == torch.cuda.get_device_name()
    assert metrics["cost/device_count"] == 1 and metrics["cost/gpu_hours"] > 0
    if gpu_energy_mj():  # nvidia-ml-py installed (the `gpu` extra) and the counter readable
        assert metrics["cost/energy_kwh"] > 0
    else:
        assert "cost/energy_kwh" not in metrics
