"""The tokenizer's loop under DDP (2 gloo processes) against one process on the global batch.

Biases ahead of a GroupNorm get gradients that are zero up to rounding, and Adam scales rounding
noise up to a whole step: such weights differ between any two summation orders (even between
thread counts) while what the network computes does not. So these tests compare the outputs.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ldm.data.batches import to_model_range
from ldm.tokenizer.model import Tokenizer
from ldm.tokenizer.train import fit
from ldm.tracker import NullTracker
from ldm.training.distributed import cleanup, init_distributed
from tests.test_tokenizer_train import ARCH, IMAGES, make_run

STEPS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, work: str, aligned: bool, sets: dict[str, object]) -> None:
    torch.set_num_threads(1)
    env = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2")
    os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank))  # as torchrun sets them
    dist = init_distributed("cpu")
    try:
        run = make_run(Path(work), STEPS, aligned, **sets)
        if "disc_weight" in sets:  # the PatchGAN needs 24 px at least
            run.model = Tokenizer(dataclasses.replace(ARCH, resolution=32))
            run.batches.images = IMAGES.repeat(2, 1).repeat(2, 2)  # (N, 32, 32, 3)
            run.val_images = run.val_images.repeat_interleave(2, -1).repeat_interleave(2, -2)
        run.dist = dist
        fit(run, NullTracker(), lambda n, **_: None)
        state = {"model": run.model.state_dict(), "history": run.history}
        if aligned:
            state["projection"] = run.alignment.projection.state_dict()
        if run.discriminator is not None:
            state["disc"] = dict(run.discriminator.named_parameters())
        torch.save(state, Path(work) / f"rank{rank}.pt")
    finally:
        cleanup()


def two_processes(work: Path, aligned: bool, **sets: object) -> list[dict]:
    mp.spawn(_worker, args=(free_port(), str(work), aligned, sets), nprocs=2)
    return [torch.load(work / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


@torch.no_grad()
def outputs(model: Tokenizer, state: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Reconstructions and posterior moments of the training images."""
    model.load_state_dict(state)
    recon, posterior, _ = model.eval()(to_model_range(IMAGES), sample=False)
    return [recon, posterior.mean, posterior.logvar]


def test_aligned_training_on_two_processes_matches_one_process(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    ranks = two_processes(tmp_path / "ddp", aligned=True)
    single = make_run(tmp_path / "one", STEPS, aligned=True)
    fit(single, NullTracker(), lambda n, **_: None)
    expected = outputs(single.model, single.model.state_dict())
    got = outputs(make_run(tmp_path / "x", STEPS).model, ranks[0]["model"])
    for ours, theirs in zip(got, expected, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    # The adaptive VF weight is the global batch's: averaged gradients, not per-rank ones.
    assert ranks[0]["history"]["train/final_loss"] == pytest.approx(
        single.history["train/final_loss"], rel=1e-4
    )
    projection = single.alignment.projection.state_dict()
    for name, value in ranks[0]["projection"].items():
        torch.testing.assert_close(value, projection[name], rtol=1e-3, atol=1e-5)
    assert (tmp_path / "ddp" / "step-00000004").is_dir()  # rank 0 saved


def test_patchgan_trains_in_step_on_both_ranks(tmp_path: Path) -> None:
    ranks = two_processes(tmp_path / "ddp", aligned=False, disc_weight=0.5, disc_start=1)
    for part in ("model", "disc"):  # DDP kept the two copies equal
        for name, value in ranks[0][part].items():
            torch.testing.assert_close(ranks[1][part][name], value, rtol=0, atol=0, msg=name)
    saved = torch.load(tmp_path / "ddp" / "step-00000004" / "state.pt", weights_only=True)
    assert "optimizer_d" in saved  # the discriminator trained and was saved with the run
    assert torch.isfinite(torch.tensor(ranks[0]["history"]["train/final_loss"]))
