"""Training-step throughput and MFU of our LightningDiT against diffusers' DiT at the same shape.

    python bench/dit_throughput.py                       # S/2, 16×16×4 latents, batch 8, CPU fp32
    python bench/dit_throughput.py --size XL/1 --latent-channels 32 --batch 64 --device cuda --bf16
    python bench/dit_throughput.py --smoke    # T/2 on 4x4x4 latents, batch 2, 2 steps, CPU fp32:
                                              # the wiring in seconds (the test suite runs it)

One training step = forward + MSE loss + backward + AdamW step. Three models run side by side,
interleaved step by step, `--steps` steps each; each row reports the median step:
- ours, LightningDiT defaults (SwiGLU, RMSNorm, 2D RoPE);
- ours with DiT's choices (GELU MLP, affine-free LayerNorm, no RoPE), to show where time goes;
- `diffusers.DiTTransformer2DModel` at the same depth, width, heads, patch and token count. It
  uses its own blocks (separate q/k/v projections, and a timestep + label embedder per block).
The ratio is ours (defaults) / diffusers in images/s.

MFU = model FLOP/s / matmul FLOP/s, the latter measured in this run by a large `torch.mm` in the
same dtype (a practical peak for this device, not the datasheet). Model FLOPs per step, counting
matmuls only (a multiply-add is 2 FLOPs; backward costs 2× forward):

    6·B·(T·W_token + W_sample) + 12·B·L·T²·D

W_token: weights of the linears applied to every token (patch embedding, qkv, attention output,
FFN, final projection); W_sample: weights applied once per sample (timestep MLP, adaLN), which the
usual 6·params·tokens would over-count; 12·L·T²·D: q·kᵀ and attn·v in L layers. The diffusers
row uses the FLOPs of our DiT-switch model (same matmul shapes up to its per-block embedders).

Peak memory: `torch.cuda.max_memory_allocated` on CUDA. On CPU there is no allocator counter, so
the row shows an estimate: parameters + gradients + AdamW state + the tensors saved for backward.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ldm.diffusion import SIZES, create_model

NUM_CLASSES = 1000


class DiffusersDiT(nn.Module):
    """diffusers' DiT behind our (x, t, y) call, times in [0, 1] as 1000·t like ours."""

    def __init__(
        self, channels: int, latent_size: int, depth: int, width: int, heads: int, patch: int
    ):
        super().__init__()
        # Imported here: gpu_check.py uses this file's FLOP count on hosts without diffusers.
        from diffusers import DiTTransformer2DModel

        self.net = DiTTransformer2DModel(
            num_attention_heads=heads,
            attention_head_dim=width // heads,
            in_channels=channels,
            out_channels=channels,
            num_layers=depth,
            sample_size=latent_size,
            patch_size=patch,
            num_embeds_ada_norm=NUM_CLASSES,
        )

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return self.net(x, timestep=1000 * t, class_labels=y).sample


def step_flops(model: nn.Module, batch: int) -> float:
    """Matmul FLOPs of one training step of our model (formula in the module docstring)."""
    per_sample = ("t_embedder", "adaLN_modulation")
    w_token = w_sample = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            if any(part in name for part in per_sample):
                w_sample += module.weight.numel()
            else:
                w_token += module.weight.numel()
    tokens, width = model.grid**2, model.pos_embed.shape[-1]
    attention = 12 * len(model.blocks) * tokens**2 * width
    return batch * (6 * (tokens * w_token + w_sample) + attention)


def matmul_flops_per_s(
    device: str, dtype: torch.dtype, sync: Callable[[], None], n: int | None = None
) -> float:
    """Median FLOP/s of a large square (n x n) torch.mm in the run's dtype."""
    n = n or (8192 if device.startswith("cuda") else 2048)
    a, b = (
        torch.randn(n, n, device=device, dtype=dtype),
        torch.randn(n, n, device=device, dtype=dtype),
    )
    times = []
    for _ in range(5):
        sync()
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times[1:])


class Runner:
    """A model with its optimizer, fixed inputs and a timed training step."""

    def __init__(self, label: str, model: nn.Module, args: argparse.Namespace, flops: float):
        self.label, self.flops, self.args = label, flops, args
        self.model = model.to(args.device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.95))
        self.forward = torch.compile(self.model) if args.compile else self.model
        g = torch.Generator().manual_seed(0)
        shape = (args.batch, args.latent_channels, args.latent_size, args.latent_size)
        self.x = torch.randn(shape, generator=g).to(args.device)  # (B, C, H, W)
        self.target = torch.randn(shape, generator=g).to(args.device)  # (B, C, H, W)
        self.t = torch.rand(args.batch, generator=g).to(args.device)  # (B,)
        self.y = torch.randint(0, NUM_CLASSES, (args.batch,), generator=g).to(args.device)  # (B,)
        self.rates: list[float] = []
        self.peak_bytes = 0

    def step(self) -> None:
        autocast = torch.autocast(self.args.device.split(":")[0], torch.bfloat16, self.args.bf16)
        with autocast:
            loss = (self.forward(self.x, self.t, self.y).float() - self.target).square().mean()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def timed(self, sync: Callable[[], None]) -> None:
        sync()
        start = time.perf_counter()
        self.step()
        sync()
        self.rates.append(self.args.batch / (time.perf_counter() - start))

    def measure_memory(self) -> None:
        if self.args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            self.step()
            self.peak_bytes = torch.cuda.max_memory_allocated()
            return
        saved: dict[int, int] = {}

        def pack(t: Tensor) -> Tensor:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            self.step()
        state = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self.peak_bytes = 4 * state + sum(saved.values())  # params, grads, Adam m and v

    def row(self, peak: float, baseline: float) -> str:
        rate = statistics.median(self.rates)
        mfu = rate / self.args.batch * self.flops / peak
        mem = self.peak_bytes / 2**20
        return f"{self.label:<34}{rate:>10.2f}{rate / baseline:>8.2f}{100 * mfu:>8.1f}%{mem:>10.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="S/2", choices=sorted(SIZES), help="model size")
    parser.add_argument("--latent-size", type=int, default=16, help="latent side, in pixels")
    parser.add_argument("--latent-channels", type=int, default=4, help="latent channels")
    parser.add_argument("--batch", type=int, default=8, help="images per step")
    parser.add_argument("--steps", type=int, default=9, help="timed steps per model; median kept")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (and bf16 matmul peak)")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU, in seconds")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.latent_size, args.latent_channels = "T/2", 4, 4
        args.batch, args.steps, args.device, args.bf16, args.compile = 2, 2, "cpu", False, False
    torch.manual_seed(0)

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize(args.device)

    shape = SIZES[args.size]
    build = (args.latent_channels, args.latent_size, NUM_CLASSES)
    ours = create_model(args.size, *build)
    dit_like = create_model(args.size, *build, swiglu=False, rmsnorm=False, rope=False)
    theirs = DiffusersDiT(
        args.latent_channels,
        args.latent_size,
        shape["depth"],
        shape["width"],
        shape["heads"],
        shape["patch"],
    )
    runners = [
        Runner("ours (LightningDiT defaults)", ours, args, step_flops(ours, args.batch)),
        Runner("ours (DiT switches)", dit_like, args, step_flops(dit_like, args.batch)),
        Runner("diffusers DiTTransformer2DModel", theirs, args, step_flops(dit_like, args.batch)),
    ]
    for runner in runners:  # warm-up (and compilation), then one step for memory
        for _ in range(2):
            runner.step()
        runner.measure_memory()
    # Round-robin, one step at a time: on a shared machine every model sees the same load.
    for _ in range(args.steps):
        for runner in runners:
            runner.timed(sync)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    peak = matmul_flops_per_s(args.device, dtype, sync, 256 if args.smoke else None)

    threads = f", {torch.get_num_threads()} threads" if args.device == "cpu" else ""
    print(
        f"{args.size}, {args.latent_channels}×{args.latent_size}² latents, batch {args.batch}, "
        f"{args.device}{threads}, {'bf16' if args.bf16 else 'fp32'}"
        f"{', compiled' if args.compile else ''}; median of {args.steps} interleaved steps"
    )
    print(
        f"matmul peak (torch.mm): {peak / 1e9:.1f} GFLOP/s; "
        f"our step: {runners[0].flops / 1e9:.1f} GFLOP"
    )
    params = [sum(p.numel() for p in r.model.parameters()) / 1e6 for r in runners]
    mem_kind = "peak MiB" if args.device.startswith("cuda") else "est. MiB"
    print(f"{'model':<34}{'img/s':>10}{'ratio':>8}{'MFU':>9}{mem_kind:>10}   params")
    baseline = statistics.median(runners[2].rates)
    for runner, count in zip(runners, params, strict=True):
        print(f"{runner.row(peak, baseline)}   {count:.1f} M")
    print(f"ours / diffusers: {statistics.median(runners[0].rates) / baseline:.2f}")
    if args.smoke:
        print("smoke run: toy sizes on the CPU; bf16, compile and the CUDA memory counter skipped")


if __name__ == "__main__":
    main()
