"""Training seeds as a trial axis: a variant's cells merged into one record for the report, its
numbers the mean over seeds with their spread, its gFD interval resampling seeds then rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from statistics import fmean, stdev

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.testing import assert_close
from typer.testing import CliRunner

from ldm.cli import app
from ldm.metrics import comparison
from ldm.metrics.bootstrap import Resampling, summarise
from ldm.metrics.comparison import Replicate, joint_draws
from ldm.metrics.frechet import frechet_distance_between
from ldm.paths import Paths
from ldm.records import EvaluateRecord, Interval, Uncertainty
from ldm.report import summary_rows, write_report
from ldm.report.features import ReportFeatures
from ldm.report.seeds import merge, merge_cells
from ldm.stages import STAGES
from tests.conftest import set_params
from tests.stage_run import TinyTrial
from tests.test_money import copy_code, dvc_status
from tests.test_report import HEADER, NET, PRICES, REPORT, falling_curve, gates, make_record

runner = CliRunner()


def invoke(*args: str) -> None:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + result.stderr


def interval(point: float, below: float, above: float) -> Interval:
    return Interval(se=(below + above) / 4, lo=point - below, hi=point + above, bias=0.5)


def cell(variant: str, seed: int, gfd: float, precision: float, psnr: float) -> EvaluateRecord:
    """One cell's record (its stages named after the cell), with intervals around its points."""
    record = make_record(f"{variant}-{seed}", gfd, precision=precision, psnr=psnr)
    relative = record.reference.relative(gfd)
    found = Uncertainty(
        draws=200,
        level=0.9,
        seed=0,
        intervals={
            "fd": interval(gfd, 2.0 + seed, 3.0),
            "relative_fd": interval(relative, 0.01, 0.02),
            "precision": interval(precision, 0.05 + 0.03 * seed, 0.06 + 0.01 * seed),
            "recall": interval(0.5, 0.1, 0.1),
        },
        per_class={"bolt": interval(gfd, 4.0, 4.0), "nut": interval(gfd, 6.0, 2.0)},
    )
    return record.model_copy(update={"variant": variant, "seed": seed, "uncertainty": found})


def test_merging_two_seeds_gives_the_mean_the_spread_and_the_typical_interval() -> None:
    first, second = cell("a", 0, 40.0, 0.6, 25.0), cell("a", 1, 44.0, 0.7, 27.0)
    assert (first.cell, second.cell) == ("a-0", "a-1")
    merged = merge([first, second])
    assert (merged.variant, merged.merged_seeds, merged.seed_count) == ("a", [0, 1], 2)
    assert merged.generation.fd == pytest.approx(42.0)
    assert merged.tokenizer.psnr == pytest.approx(26.0)
    assert merged.generation.precision == pytest.approx(0.65)
    assert merged.seed_spread["fd"] == pytest.approx(stdev([40.0, 44.0]))
    assert merged.seed_spread["precision"] == pytest.approx(stdev([0.6, 0.7]))
    assert merged.seed_spread["psnr"] == pytest.approx(stdev([25.0, 27.0]))
    # no joint draws given: every interval is the seeds' own offsets, averaged, around the mean
    precision = merged.interval("precision")
    assert precision.lo == pytest.approx(0.65 - fmean([0.05, 0.08]))
    assert precision.hi == pytest.approx(0.65 + fmean([0.06, 0.07]))
    assert merged.interval("fd").lo == pytest.approx(42.0 - 2.5)
    assert merged.uncertainty.per_class["nut"].lo == pytest.approx(42.0 - 6.0)
    # the cost: the shared stage once, each seed's own stages
    assert set(merged.cost.stages) == {
        "validate",
        *(f"{s}@a-{seed}" for s in ("train_tokenizer", "train_diffusion") for seed in (0, 1)),
    }
    assert merged.cost.total.usd == pytest.approx(0.01 + 2 * (1.0 - 0.01))

    # with the joint draws (seeds, then rows), the gFD's interval is theirs around the mean
    draws = np.random.default_rng(0).normal(43.0, 3.0, 500)
    joint = merge([first, second], {"fd": draws})
    expected = summarise(42.0, draws, 0.9)
    assert (joint.interval("fd").lo, joint.interval("fd").hi) == pytest.approx(
        (expected.lo, expected.hi)
    )
    assert joint.interval("precision") == precision  # the others keep the typical interval

    with pytest.raises(ValueError, match="one variant"):
        merge([first, cell("b", 1, 40.0, 0.6, 25.0)])


ROWS, DIMS = 120, 8


def two_seed_trial() -> tuple[list[EvaluateRecord], ReportFeatures]:
    """Variant `a` trained with seeds 0 and 1, `b` with seed 0: rows whose gFDs the records
    hold, as `evaluate` keeps them."""
    rng = np.random.default_rng(3)
    val, train = rng.standard_normal((2, ROWS, DIMS))
    replicates: dict[str, list[Replicate]] = {}
    records = []
    for variant, seed, shift in (("a", 0, 0.6), ("a", 1, 0.8), ("b", 0, 1.5)):
        generated = shift + rng.standard_normal((ROWS, DIMS))
        replicates.setdefault(variant, []).append(
            Replicate(generated, 3.0 + rng.standard_normal((ROWS, DIMS)))
        )
        gfd = frechet_distance_between(val, generated)
        records.append(cell(variant, seed, gfd, 0.6 + 0.05 * seed, 25.0 + seed))
    features = ReportFeatures(
        network=NET,
        val=val,
        train=train,
        variants={name: tuple(found) for name, found in replicates.items()},
        draws=200,
        level=0.9,
        seed=0,
        kid_subset_size=50,
    )
    return records, features


def test_a_variant_with_two_seeds_is_reported_as_mean_sd_and_its_joint_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cells, features = two_seed_trial()
    drawn = []
    counted = comparison.joint_draws
    monkeypatch.setattr(
        comparison, "joint_draws", lambda *a, **k: drawn.append(1) or counted(*a, **k)
    )
    merged = merge_cells({"a": cells[:2], "b": cells[2:]}, features)
    assert [r.variant for r in merged] == ["a", "b"]
    assert merged[1] == cells[2]  # one seed: the cell's own record, unchanged
    a = merged[0]
    found = joint_draws(
        features.val, features.train, {"a": features.variants["a"]}, Resampling(200, 0.9, 0)
    )["a"]
    assert a.generation.fd == pytest.approx(found.gfd)  # the mean of the seeds' gFDs
    expected = summarise(a.generation.fd, found.gfd_draws, 0.9)
    assert (a.interval("fd").lo, a.interval("fd").hi) == pytest.approx((expected.lo, expected.hi))

    curves = {name: falling_curve(name) for name in ("a", "b")}
    kwargs = {"report": REPORT, "gates": gates(), "prices": PRICES, "header": HEADER}
    summary = write_report(tmp_path / "reports", merged, curves, features, **kwargs)
    assert len(drawn) == 1  # the merge's draws are the verdicts' draws, drawn once
    v = {s.variant: s for s in summary.variants}
    assert (v["a"].seeds, v["b"].seeds) == (2, 1)
    assert v["a"].seed_spread == pytest.approx(stdev([r.generation.fd for r in cells[:2]]))
    assert v["a"].spreads["gfd"] == pytest.approx(v["a"].seed_spread)
    assert v["b"].spreads == {} and v["b"].seed_spread is None
    # one more seed costs what one cell's own stages cost, not the shared ones
    assert v["a"].per_seed_usd == pytest.approx(v["b"].per_seed_usd) == pytest.approx(0.99)
    table = summary_rows(summary)
    row_a, row_b = table.rows
    assert " ± " in row_a[3] and "[" in row_a[3] and " ± " not in row_b[3]
    assert "2 training seeds" in table.note
    text = (tmp_path / "reports" / "report.md").read_text()
    assert " ± " in text and "first seed's curve" in text


def test_adding_a_second_seed_reruns_only_the_new_cells_and_the_report(trial_copy: Path) -> None:
    """`dvc status` after trial.seeds went from [0] to [0, 1]: the cells of seed 1 are new, the
    report reads them all; no stage of seed 0 reruns (a cell's seed is its matrix entry)."""
    root = trial_copy
    copy_code(root)
    dvc = [sys.executable, "-m", "dvc"]
    for cmd in (["git", "init", "-q"], [*dvc, "init", "-q"], [*dvc, "commit", "-f", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    assert dvc_status(root) == {}
    set_params(root / "params.yaml", {"trial.seeds": [0, 1]})
    status = dvc_status(root)
    per_cell = [name for name, stage in STAGES.items() if stage.per_variant]
    new = {f"{stage}@{variant}-1" for stage in per_cell for variant in ("plain", "aligned")}
    assert set(status) == new | {"report"}, status
    assert "trial.seeds" in json.dumps(status["report"])


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_a_cells_seed_offsets_the_seeds_of_its_tokenizer_and_its_dit(
    prepared_copy: Path, tiny_trial: TinyTrial
) -> None:
    """Cell plain-1 trains as plain-0 does with tokenizer.seed and diffusion.seed raised by 1:
    the seeds add up, and every random draw of both loops follows them."""
    paths = Paths(prepared_copy)
    set_params(prepared_copy / "params.yaml", {"trial.seeds": [0, 1]})
    invoke("train-tokenizer", "--variant", "plain", "--seed", "1")
    one = weights(paths.tokenizer("plain-1"))
    zero = weights(Paths(tiny_trial.root).tokenizer("plain-0"))  # the same settings, seed 0
    assert any(not torch.equal(one[k], zero[k]) for k in one)  # another seed, another model
    invoke("train-tokenizer", "--variant", "plain", "--seed", "0", "--set", "tokenizer.seed=1")
    assert_close(weights(paths.tokenizer("plain-0")), one, rtol=0, atol=0)
    config = json.loads((paths.tokenizer("plain-1") / "config.json").read_text())
    assert (config["variant"], config["seed"]) == ("plain", 1)

    # The two cells' tokenizers are now the same model: their DiTs differ by their seed alone.
    invoke("encode", "--variant", "plain")
    invoke("train-diffusion", "--variant", "plain", "--seed", "1")
    one = weights(paths.diffusion("plain-1"))
    invoke("train-diffusion", "--variant", "plain", "--seed", "0")
    zero = weights(paths.diffusion("plain-0"))
    assert any(not torch.equal(one[k], zero[k]) for k in one)
    invoke("train-diffusion", "--variant", "plain", "--seed", "0", "--set", "diffusion.seed=1")
    assert_close(weights(paths.diffusion("plain-0")), one, rtol=0, atol=0)


def test_a_second_seed_trains_its_cells_and_the_report_judges_each_variant_over_both(
    trial_copy: Path,
) -> None:
    """The tiny trial with trial.seeds [0, 1]: the cells of seed 1 run (as `ldm <stage>` runs
    them), then the report merges each variant's two cells, registers all four generators and
    gives `candidate` to the recommended variant's cell with the lower gFD."""
    from ldm import config
    from ldm.stages import run, stage_names

    paths = Paths(trial_copy)
    set_params(trial_copy / "params.yaml", {"trial.seeds": [0, 1]})
    gates = ["promotion.gates.staging.max_relative_fd=1000"]  # a tiny model passes
    cfg = config.load(trial_copy / "params.yaml", gates)
    for name in stage_names(cfg):
        stage, _, cell = name.partition("@")
        if cell.endswith("-1") or stage == "report":
            run(stage, cfg, paths, cell or None)
    cells = {
        c: EvaluateRecord.model_validate_json(paths.stage_metrics(f"evaluate@{c}").read_text())
        for c in cfg.cells()
    }
    assert [(r.variant, r.seed) for r in cells.values()] == [
        (v, s) for v in ("plain", "aligned") for s in (0, 1)
    ]
    summary = json.loads((paths.reports / "summary.json").read_text())
    for v in summary["variants"]:
        own = [cells[f"{v['variant']}-{s}"] for s in (0, 1)]
        assert v["seeds"] == 2
        assert v["gfd"] == pytest.approx(fmean(r.generation.fd for r in own))
        assert v["seed_spread"] == pytest.approx(stdev(r.generation.fd for r in own))
        assert set(v["spreads"]) >= {"gfd", "relative_fd", "precision", "psnr"}
    registry = json.loads((paths.reports / "registry.json").read_text())
    assert set(registry["versions"]) == set(cfg.cells())
    recommended = summary["recommended"]
    best = min((f"{recommended}-{s}" for s in (0, 1)), key=lambda c: cells[c].generation.fd)
    assert registry["candidate"] == registry["versions"][best]
    text = (paths.reports / "report.md").read_text()
    assert "2 training seeds" in text and " ± " in text
