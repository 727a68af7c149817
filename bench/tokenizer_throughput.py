"""Encode+decode throughput of our `Tokenizer` against diffusers' `AutoencoderKL` of the same shape.

    python bench/tokenizer_throughput.py                       # f4d8, 32 px, batch 64, CPU
    python bench/tokenizer_throughput.py --preset f16d32 --resolution 256 --batch 4 --repeats 3
    python bench/tokenizer_throughput.py --smoke    # f4d8 at 16 px, batch 2, one repeat, CPU:
                                                    # the wiring in seconds (the test suite runs it)

The diffusers model is built with block_out_channels = ch * ch_mult, layers_per_block =
num_res_blocks, latent_channels = d, our GroupNorm group count and random weights; where our
`attn_resolutions` put attention inside a level, that level uses diffusers' Attn*EncoderBlock2D /
AttnUpDecoderBlock2D, which (like LDM) follow each res block with a single-head attention block.
Known differences from our layout, and what the script does about them:
- diffusers adds 1x1 `quant_conv`/`post_quant_conv` around the latent by default (LDM has them
  too; we do not). They are switched off here (`use_quant_conv=False`), so the two networks are
  the same graph; the script copies our weights into the diffusers model and prints the largest
  output difference to show it.
- diffusers' attention uses Linear projections on (B, HW, C) tokens where LDM and we use 1x1
  convs on (B, C, H, W); same parameters and maths, different memory traffic.
- diffusers takes one `norm_num_groups` for the whole model; ours picks per layer (32 when each
  group keeps `min_group_channels`), so for presets whose widths are all 128 or more (the f16
  ones) they agree. Where ours would differ per layer (f4d8: 8, 16, 16 groups), both models
  use LDM's 32 groups on every layer (ours with min_group_channels=1), so that they stay one
  graph; the script says so. The group count barely changes the time of a norm.
Both models get the same flags (bf16 autocast, torch.compile, channels_last) and the same input.
The repeats alternate which model goes first; the median of each is reported.

On CPU, glibc hands big freed activations back to the OS, so most large outputs are page-faulted
in afresh. That slows both models 2-3x and makes the ratio depend on each model's allocation
order (ours/diffusers moved between 0.76 and 1.2 on a loaded 2-core box). For compute-bound
numbers keep the memory in the process:
    MALLOC_MMAP_THRESHOLD_=4000000000 MALLOC_TRIM_THRESHOLD_=8000000000 python bench/...
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from ldm.tokenizer.model import Tokenizer, TokenizerArch, arch_from_preset, num_groups


def build_diffusers(arch: TokenizerArch) -> nn.Module:
    """diffusers AutoencoderKL with our channels, blocks, attention sides and groups."""
    from diffusers import AutoencoderKL

    widths = [arch.ch * m for m in arch.ch_mult]
    groups = {num_groups(w, arch.min_group_channels) for w in widths}
    if len(groups) != 1:
        raise SystemExit(f"widths {widths} need different GroupNorm counts; diffusers takes one")
    sides = [arch.resolution // 2**i for i in range(len(widths))]
    attn = [s in arch.attn_resolutions for s in sides]
    return AutoencoderKL(
        down_block_types=tuple(
            "AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attn
        ),
        up_block_types=tuple(
            "AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in attn[::-1]
        ),
        block_out_channels=tuple(widths),
        layers_per_block=arch.num_res_blocks,
        latent_channels=arch.latent_channels,
        norm_num_groups=groups.pop(),
        sample_size=arch.resolution,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def diffusers_key(key: str, n_levels: int) -> str:
    """Our (LDM-named) state-dict key -> the diffusers AutoencoderKL key for the same tensor."""
    key = re.sub(r"^decoder\.up\.(\d+)\.", lambda m: f"decoder.up.{n_levels - 1 - int(m[1])}.", key)
    for ours, theirs in [
        (r"\.down\.(\d+)\.block\.", r".down_blocks.\1.resnets."),
        (r"\.down\.(\d+)\.attn\.", r".down_blocks.\1.attentions."),
        (r"\.down\.(\d+)\.downsample\.", r".down_blocks.\1.downsamplers.0."),
        (r"\.up\.(\d+)\.block\.", r".up_blocks.\1.resnets."),
        (r"\.up\.(\d+)\.attn\.", r".up_blocks.\1.attentions."),
        (r"\.up\.(\d+)\.upsample\.", r".up_blocks.\1.upsamplers.0."),
        (r"\.mid\.block_1\.", ".mid_block.resnets.0."),
        (r"\.mid\.block_2\.", ".mid_block.resnets.1."),
        (r"\.mid\.attn_1\.", ".mid_block.attentions.0."),
        (r"\.nin_shortcut\.", ".conv_shortcut."),
        (r"\.norm_out\.", ".conv_norm_out."),
        (r"attentions\.(\d+)\.norm\.", r"attentions.\1.group_norm."),
        (r"attentions\.(\d+)\.(q|k|v)\.", r"attentions.\1.to_\2."),
        (r"attentions\.(\d+)\.proj_out\.", r"attentions.\1.to_out.0."),
    ]:
        key = re.sub(ours, theirs, key)
    return key


@torch.no_grad()
def copy_weights(ours: Tokenizer, theirs: nn.Module) -> None:
    """Load our weights into the diffusers model (1x1 conv kernels become Linear weights)."""
    target = theirs.state_dict()
    n = len(ours.arch.ch_mult)
    loaded = {}
    for key, value in ours.state_dict().items():
        if key.startswith("latent_"):
            continue
        name = diffusers_key(key, n)
        loaded[name] = value.reshape(target[name].shape)
    missing = set(target) - set(loaded)
    if missing:
        raise SystemExit(f"diffusers has tensors we lack: {sorted(missing)[:5]}")
    theirs.load_state_dict(loaded)


def median_seconds(fns: dict[str, Callable[[], object]], repeats: int, sync: Callable) -> dict:
    """Median wall time per function; the order alternates each repeat to cancel drift."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            sync()
            start = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="f4d8")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for both models")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU, in seconds")
    args = parser.parse_args()
    if args.smoke:
        args.preset, args.resolution, args.batch, args.repeats, args.warmup = "f4d8", 16, 2, 1, 1
        args.device, args.bf16, args.compile, args.channels_last = "cpu", False, False, False

    torch.manual_seed(0)
    device = torch.device(args.device)
    arch = arch_from_preset(args.preset, args.resolution)
    widths = [arch.ch * m for m in arch.ch_mult]
    groups = [num_groups(w, arch.min_group_channels) for w in widths]
    if len(set(groups)) > 1:  # diffusers takes one count: LDM's, on every layer of both models
        arch = dataclasses.replace(arch, min_group_channels=1)
        shown = [num_groups(w, 1) for w in widths]
        print(f"GroupNorm groups per level {groups} in ours; both models use {shown} here")
    ours = Tokenizer(arch).eval()
    theirs = build_diffusers(arch).eval()
    copy_weights(ours, theirs)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())

    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    ours.to(device, memory_format=fmt)
    theirs.to(device, memory_format=fmt)
    x = torch.rand(args.batch, 3, args.resolution, args.resolution, generator=torch.Generator())
    x = (2 * x - 1).to(device).contiguous(memory_format=fmt)  # (B, 3, H, W) in [-1, 1]

    def run_ours(model: nn.Module = ours) -> torch.Tensor:
        return model.decode(model.encode(x))

    def run_theirs(model: nn.Module = theirs) -> torch.Tensor:
        return model.decode(model.encode(x).latent_dist.mode()).sample

    if args.compile:
        # Compile the submodules so that both sides keep their own Python wrappers.
        for m in (ours, theirs):
            m.encoder.compile()
            m.decoder.compile()

    def under_flags(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def wrapped() -> torch.Tensor:
            with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, args.bf16):
                return fn()

        return wrapped

    fns = {"ours": under_flags(run_ours), "diffusers": under_flags(run_theirs)}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    diff = (fns["ours"]().float() - fns["diffusers"]().float()).abs().max().item()
    median_seconds(fns, args.warmup, sync)
    sec = median_seconds(fns, args.repeats, sync)

    flags = [f for f in ("bf16", "compile", "channels_last") if getattr(args, f)]
    print(
        f"{args.preset} @ {args.resolution}px, batch {args.batch}, {device}, "
        f"flags: {', '.join(flags) or 'none'}, median of {args.repeats}, "
        f"{torch.get_num_threads()} threads"
    )
    if device.type == "cpu":
        print(f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', '(unset)')}")
    print(f"params: ours {n_ours:,}  diffusers {n_theirs:,}")
    print(f"max |ours - diffusers| with shared weights: {diff:.2e}")
    for name, s in sec.items():
        print(f"{name:>9}: {args.batch / s:8.2f} images/s  ({s * 1e3:.1f} ms per batch)")
    print(f"ratio ours/diffusers (images/s): {sec['diffusers'] / sec['ours']:.3f}")
    if args.smoke:
        print("smoke run: toy sizes on the CPU; bf16, compile and channels-last skipped")


if __name__ == "__main__":
    main()
