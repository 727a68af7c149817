"""The ODE sampler: time grid, exactness on known fields, CFG over all channels, determinism."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from ldm.diffusion import create_model
from ldm.diffusion.sample import euler, guided_velocity, heun, sample, shift_time, time_grid
from tests.test_diffusion import unzero


class ClassOffset(nn.Module):
    """Toy model: v = x + label + 1 on every channel, so cond and uncond differ everywhere."""

    num_classes = 3

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        return x + (y.float() + 1).view(-1, 1, 1, 1)


@pytest.mark.parametrize("shift", [0.3, 1.0, 3.0])
def test_shift_fixes_ends_and_is_monotone(shift: float) -> None:
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    shifted = shift_time(t, shift)
    assert shifted[0] == 0 and shifted[-1] == 1
    assert (shifted.diff() > 0).all()
    grid = time_grid(10, shift)
    assert grid.shape == (11,) and grid[0] == 1 and grid[-1] == 0 and (grid.diff() < 0).all()


def test_paper_shift_spends_more_steps_near_noise() -> None:
    assert (time_grid(100, 0.3) > 0.5).sum() > 70  # uniform would put 50 there
    torch.testing.assert_close(time_grid(8, 1.0), torch.linspace(1, 0, 9, dtype=torch.float64))


@pytest.mark.parametrize("solver", [euler, heun])
@pytest.mark.parametrize("steps", [1, 7, 50])
def test_constant_field_reaches_the_data_exactly(solver, steps: int) -> None:
    x0, noise = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    out = solver(lambda x, t: noise - x0, noise, time_grid(steps, 0.3))
    torch.testing.assert_close(out, x0)


@pytest.mark.parametrize("steps", [1, 5, 40])
def test_euler_is_exact_on_the_straight_path_field(steps: int) -> None:
    # v(x, t) = (x − x0) / t is the velocity of the straight path to x0; Euler stays on it.
    x0, noise = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    out = euler(lambda x, t: (x - x0) / t, noise, time_grid(steps, 0.3))
    torch.testing.assert_close(out, x0)


def test_cfg_scale_one_is_the_conditional_prediction() -> None:
    x, y = torch.randn(4, 2, 3, 3), torch.tensor([0, 1, 2, 0])
    cond = ClassOffset()(x, torch.zeros(4), y)
    torch.testing.assert_close(guided_velocity(ClassOffset(), x, 0.5, y, 1.0), cond)


def test_cfg_guides_every_channel_inside_the_interval_only() -> None:
    x, y = torch.randn(4, 5, 3, 3), torch.tensor([0, 1, 2, 0])
    model = ClassOffset()
    cond = model(x, torch.zeros(4), y)
    uncond = model(x, torch.zeros(4), torch.full_like(y, 3))
    guided = guided_velocity(model, x, 0.5, y, 4.0, (0.1, 0.9))
    torch.testing.assert_close(guided, uncond + 4.0 * (cond - uncond))
    assert ((guided - cond).abs() > 1e-3).all()  # every element of every channel moved
    torch.testing.assert_close(guided_velocity(model, x, 0.95, y, 4.0, (0.1, 0.9)), cond)


def test_sample_applies_the_guidance_formula_inside_the_interval_only() -> None:
    # The whole sampler at a scale other than 1, against Euler written out by hand with
    # v = v_u + s·(v_c − v_u) for t inside [0.2, 0.7] and v = v_c outside.
    model, scale, interval = ClassOffset(), 3.0, (0.2, 0.7)
    y = torch.tensor([0, 2])
    generator = torch.Generator().manual_seed(5)
    out = sample(model, (2, 3, 4, 4), y, 10, "euler", scale, interval, 1.0, generator)
    x = torch.randn((2, 3, 4, 4), generator=torch.Generator().manual_seed(5))
    grid = time_grid(10, 1.0).tolist()
    guided_steps = 0
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        cond = model(x, torch.full((2,), t), y)
        v = cond
        if interval[0] <= t <= interval[1]:
            uncond = model(x, torch.full((2,), t), torch.full_like(y, model.num_classes))
            v = uncond + scale * (cond - uncond)
            guided_steps += 1
        x = x + (t_next - t) * v
    assert 0 < guided_steps < 10  # the interval really splits the trajectory
    torch.testing.assert_close(out, x)


def test_sampling_is_deterministic_under_a_seed_and_batch_size() -> None:
    model = unzero(create_model("T/2", 4, 8, 3))  # a non-trivial velocity field
    labels = torch.tensor([0, 1, 2, 0, 1])

    def run(seed: int, batch_size: int, solver: str = "euler") -> Tensor:
        return sample(
            model,
            (5, 4, 8, 8),
            labels,
            steps=4,
            solver=solver,
            cfg_scale=2.0,
            cfg_interval=(0.0, 0.9),
            generator=torch.Generator().manual_seed(seed),
            batch_size=batch_size,
        )

    first = run(0, 5)
    assert first.shape == (5, 4, 8, 8) and model.training  # mode restored
    assert torch.equal(first, run(0, 5))
    torch.testing.assert_close(first, run(0, 2))
    assert not torch.allclose(first, run(1, 5))
    assert not torch.allclose(first, run(0, 5, "heun"))


def test_unconditional_sampling_and_errors() -> None:
    model = create_model("T/2", 4, 8, 0)
    out = sample(model, (2, 4, 8, 8), None, steps=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="needs labels"):
        sample(model, (2, 4, 8, 8), None, steps=2, cfg_scale=3.0)
    with pytest.raises(ValueError, match="unknown solver"):
        sample(model, (2, 4, 8, 8), None, steps=2, solver="rk4")
