"""Each stage's dvc.yaml params and data deps are what it reads, checked by watching it read.

The tiny trial (tests/stage_run.py) runs every stage once and notes the config keys and the
paths under data/ each one read. A stage must declare every key it read (a declared section
covers its keys, `variants.${item.variant}` its own variant's entry) and every path it read that
is not its own output, so that no change goes unnoticed by DVC; and it must read every key it
declares, so that a change reruns only the stages whose results it changes: a reporting setting
or a price never retrains a model. (The code a stage runs is checked by tests/test_wiring.py.)
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ldm.config import Section, VariantConfig, load
from ldm.stages import STAGES
from tests.stage_run import (
    ALIGNED,
    PLAIN,
    SEED,
    Recorder,
    RecordingPaths,
    TinyTrial,
    key_leaves,
    recording,
)

REPO = Path(__file__).resolve().parents[1]
PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]

# Keys a stage reads that choose only how fast it runs, never what it writes: no stage declares
# them, so changing one reruns nothing.
SPEED_ONLY = {
    "data.workers": "decode processes: validate and prepare map over the images in order, so "
    "any number of them writes the same files",
}

# Not watched: what the runner around every stage reads (ldm/stages/runner.py), none of it a
# stage's dep. `tracking.experiment` picks the MLflow experiment; `*.world_size` how many
# processes run it; `cost` prices the stage's hours into its metrics' `cost/usd` as it ends, a
# record of what that run cost: the report, which answers with prices, declares `cost`.

# Declared keys that the tiny trial (on a CPU) never reaches, and where they are read (the
# report prices GPU-hours, zero or not, with cost.gpu_hour_usd).
REGULARISER = (
    "read only by a cell whose variant switches its regulariser on (ldm/stages/"
    "train_tokenizer.py); the tiny trial's plain and aligned variants switch none on"
)
OTHER_BRANCH: dict[tuple[str, str], str] = {
    ("train_tokenizer", f"{section}.{key}"): REGULARISER
    for section, keys in {
        "equivariance": ("weight", "share", "scales", "rotations"),
        "latent_denoising": ("gamma", "mask", "mask_ratio"),
    }.items()
    for key in keys
}


def body(stages: dict[str, Any], stage: str) -> dict[str, Any]:
    """A stage's entry (a per-variant one is a DVC `matrix` stage, its body its own)."""
    return stages[stage].get("do", stages[stage])


def resolve(entry: str, values: dict[str, Any], cell: str) -> str:
    """`${item.variant}` and `${item.seed}` -> the run's cell's (`plain-0`), `${data.raw_dir}`
    -> its value in params."""
    variant, _, seed = cell.rpartition("-")
    item = {"item.variant": variant, "item.seed": seed}

    def value(match: re.Match) -> str:
        name = match.group(1)
        if name in item:
            return item[name]
        node = values
        for part in name.split("."):
            node = node[part]
        return str(node)

    return re.sub(r"\$\{([^}]+)\}", value, entry)


def as_template(key: str, cell: str) -> str:
    """`variants.plain.preset` read by a `@plain-0` run -> `variants.${item.variant}.preset`."""
    own = f"variants.{cell.rpartition('-')[0]}"
    if cell and (key == own or key.startswith(own + ".")):
        return "variants.${item.variant}" + key[len(own) :]
    return key


def covers(entry: str, key: str) -> bool:
    """A params entry (a key, a section, "": the whole config) covers `key`."""
    return not entry or key == entry or key.startswith(entry + ".")


def leaves_under(keys: set[str], leaves: set[str]) -> set[str]:
    """The leaf keys each key stands for: itself, or all of a section's."""
    found = set()
    for key in keys:
        found |= {leaf for leaf in leaves if covers(key, leaf)} or {key}
    return found


def key_problems(stages: dict[str, Any], trial: TinyTrial) -> list[str]:
    """Keys read but not declared, per run; keys declared but read by no run of the stage."""
    problems, unread = [], {}
    for run, reads in trial.reads.items():
        stage, _, cell = run.partition("@")
        values = reads.cfg.to_dict()
        leaves = key_leaves(values)
        entries = {resolve(e, values, cell) for e in body(stages, stage).get("params", [])}
        declared = leaves_under(entries, leaves)
        read = leaves_under(reads.keys, leaves)
        problems += [
            f"{run} reads {key}, which its dvc.yaml params do not declare"
            for key in sorted(read - declared - SPEED_ONLY.keys())
        ]
        never = {as_template(key, cell) for key in declared - read}
        unread[stage] = unread.get(stage, never) & never
    for stage, keys in unread.items():
        problems += [
            f"{stage} declares {key} in dvc.yaml but never reads it: a change reruns it for nothing"
            for key in sorted(keys)
            if (stage, key) not in OTHER_BRANCH
        ]
    return problems


def within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + "/")


def makes(path: str, out: str) -> bool:
    """`path` is `out`, inside it, a folder holding it (it makes that folder), or in a
    temporary beside it that becomes it (`.val.npz.tmp.npz`, `.plain.tmp/meta.json`)."""
    if within(path, out) or (within(out, path) and path != "data"):
        return True
    folder, _, name = out.rpartition("/")
    if not path.startswith(folder + "/"):
        return False
    beside = path.removeprefix(folder + "/").split("/")[0]
    return beside.startswith((f".{name}", f"{name}."))


def path_problems(stages: dict[str, Any], trial: TinyTrial) -> list[str]:
    """Paths read that are neither a dep nor the stage's own output, per run; data deps read by
    no run of the stage."""
    problems, unread = [], {}
    for run, reads in trial.reads.items():
        stage, _, cell = run.partition("@")
        spec, values = body(stages, stage), reads.cfg.to_dict()
        deps = {d: resolve(d, values, cell) for d in spec.get("deps", []) if d[:4] != "ldm/"}
        outs = [
            resolve(out if isinstance(out, str) else next(iter(out)), values, cell)
            for out in spec.get("outs", []) + spec.get("metrics", [])
        ]
        # Its resume points: outside its outputs, which DVC deletes before it reruns a stage.
        outs.append(f"data/.work/{run}")
        for path in sorted(reads.paths):
            if not any(within(path, dep) for dep in deps.values()) and not any(
                makes(path, out) for out in outs
            ):
                problems.append(
                    f"{run} reads {path}, which is neither a dep nor an output in its dvc.yaml"
                )
        never = {
            entry
            for entry, dep in deps.items()
            if not any(within(p, dep) or within(dep, p) for p in reads.paths)
        }
        unread[stage] = unread.get(stage, never) & never
    for stage, entries in unread.items():
        problems += [
            f"{stage} depends on {e} in dvc.yaml but never reads it" for e in sorted(entries)
        ]
    return problems


def test_the_recorder_sees_each_way_a_stage_reads_the_config() -> None:
    cfg = load(REPO / "params.yaml")
    recorder = Recorder(REPO)
    recorder.watch(cfg)
    with recording(recorder):
        _ = cfg.tokenizer.steps  # not inside a stage: not noted
        with recorder.watching("probe", cfg):
            _ = cfg.sample.steps  # an attribute
            _ = cfg.promotion.gates.staging.max_fd  # in nested sections: the key alone
            _ = cfg.validate_.min_side  # under its params.yaml name
            cfg.section("tokenizer")["lr"]  # one key of a section's dict
            json.dumps(cfg.section("report"))  # a section's dict used whole
            {**cfg.section("registry")}
            cfg.section("variants")["plain"]  # one variant's entry, whole
            cfg.variant("aligned")  # its entry, and the `align` keys its nulls fall back on
            cfg.evaluate.model_dump()  # a section dumped, compared, pickled: all of it
            assert cfg.cost == cfg.cost
            pickle.dumps(cfg.tracking)
    assert "__getattribute__" not in vars(Section)
    aligned = {f"variants.aligned.{field}" for field in VARIANT_FIELDS}
    assert recorder.reads["probe"].keys == {
        "sample.steps",
        "promotion.gates.staging.max_fd",
        "validate.min_side",
        "tokenizer.lr",
        "report",
        "registry",
        "registry.model_name",  # {**d} reads its keys, then each value
        "variants.plain",
        "variants.aligned",
        *aligned,
        "align.foundation",
        "align.phases",
        "align.cos_margin",
        "align.distmat_margin",
        "evaluate",
        "evaluate.bootstrap",  # a nested section, dumped with its parent
        "cost",
        "tracking",
    }


def test_the_recorder_sees_which_data_paths_a_stage_uses(tmp_path: Path) -> None:
    cfg = load(REPO / "params.yaml")
    recorder, paths = Recorder(tmp_path), RecordingPaths(tmp_path)
    with recording(recorder), recorder.watching("probe", cfg):
        (paths.reference / "val.npz").is_file()  # a file of a folder: that file
        paths.tokenizer("plain")  # asked for, never used: nothing
        os.fspath(paths.latents("plain"))  # handed to a reader (numpy, polars): all of it
        Path(paths.diffusion("plain")) / "model.safetensors"  # made a plain Path: all of it
        str(paths.prepared / "meta.json")  # as text (for a reader in Rust)
        (paths.root / "params.yaml").is_file()  # outside data/: not noted
    assert recorder.reads["probe"].paths == {
        "data/reference/val.npz",
        "data/latents/plain",
        "data/checkpoints/diffusion-plain",
        "data/prepared/meta.json",
    }


def test_every_stage_ran_watched(tiny_trial: TinyTrial) -> None:
    runs = set(tiny_trial.reads)
    for stage, spec in STAGES.items():
        assert (f"{stage}@{PLAIN}-{SEED}" if spec.per_variant else stage) in runs
    assert f"train_tokenizer@{ALIGNED}-{SEED}" in runs
    assert all(reads.keys and reads.paths for reads in tiny_trial.reads.values())
    assert (tiny_trial.root / "data" / "reports" / "summary.json").is_file()


def test_each_stage_declares_exactly_the_params_it_reads(tiny_trial: TinyTrial) -> None:
    assert key_problems(PIPELINE, tiny_trial) == []


def test_each_stage_declares_the_data_it_reads(tiny_trial: TinyTrial) -> None:
    assert path_problems(PIPELINE, tiny_trial) == []


def test_the_exceptions_are_still_exceptions(tiny_trial: TinyTrial) -> None:
    """A speed-only key: some stage reads it, none declares it. An other-branch key: its stage
    declares it, and the tiny trial does not read it."""
    for key in SPEED_ONLY:
        assert any(key in reads.keys for reads in tiny_trial.reads.values()), key
        for stage in PIPELINE:
            assert not any(covers(e, key) for e in body(PIPELINE, stage).get("params", []))
    for stage, key in OTHER_BRANCH:
        assert any(covers(e, key) for e in body(PIPELINE, stage).get("params", [])), key
        runs = [r for run, r in tiny_trial.reads.items() if run.partition("@")[0] == stage]
        assert not any(key in leaves_under(r.keys, key_leaves(r.cfg.to_dict())) for r in runs)


VARIANT_FIELDS = sorted(VariantConfig.model_fields)
VARIANTS = (PLAIN, ALIGNED)  # in the order the tiny trial runs them


@pytest.mark.parametrize(
    ("stage", "entry", "reads"),
    [
        ("reference", "diffusion.device", {"reference": ["diffusion.device"]}),  # a key alone
        # a section: the keys it read
        (
            "report",
            "cost",
            {"report": ["cost.bill_cpu_on_gpu", "cost.cpu_hour_usd", "cost.gpu_hour_usd"]},
        ),
        (  # a variant's own entry, in each run
            "train_tokenizer",
            "variants.${item.variant}",
            {
                f"train_tokenizer@{v}-{SEED}": [f"variants.{v}.{f}" for f in VARIANT_FIELDS]
                for v in VARIANTS
            },
        ),
        ("report", "trial.seeds", {"report": ["trial.seeds"]}),  # which cells it reads
    ],
)
def test_a_key_read_but_not_declared_fails_the_check(
    tiny_trial: TinyTrial, stage: str, entry: str, reads: dict[str, list[str]]
) -> None:
    stages = copy.deepcopy(PIPELINE)
    body(stages, stage)["params"].remove(entry)
    assert key_problems(stages, tiny_trial) == [
        f"{run} reads {key}, which its dvc.yaml params do not declare"
        for run, keys in reads.items()
        for key in keys
    ]


def test_a_key_declared_but_never_read_fails_the_check(tiny_trial: TinyTrial) -> None:
    stages = copy.deepcopy(PIPELINE)
    body(stages, "encode")["params"].append("report.target_fd")
    evaluate = body(stages, "evaluate")["params"]
    evaluate[:] = [e for e in evaluate if not e.startswith("sample.")] + ["sample"]
    assert key_problems(stages, tiny_trial) == [
        "encode declares report.target_fd in dvc.yaml but never reads it: a change reruns it "
        "for nothing",
        *(
            f"evaluate declares sample.{key} in dvc.yaml but never reads it: a change reruns it "
            "for nothing"
            for key in ("cfg_scale", "seed")  # cfg_scale: evaluate.cfg_scales chooses per variant
        ),
    ]


def test_a_path_read_but_not_declared_fails_the_check(tiny_trial: TinyTrial) -> None:
    stages = copy.deepcopy(PIPELINE)
    body(stages, "evaluate")["deps"].remove("data/metrics/reference.json")
    body(stages, "encode")["deps"].append("data/reference/val.npz")
    assert path_problems(stages, tiny_trial) == [
        *(
            f"evaluate@{variant}-{SEED} reads data/metrics/reference.json, which is neither a "
            "dep nor an output in its dvc.yaml"
            for variant in VARIANTS
        ),
        "encode depends on data/reference/val.npz in dvc.yaml but never reads it",
    ]


def test_stage_runs_logged_the_sections_their_params_name(tiny_trial: TinyTrial) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tiny_trial.root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(tiny_trial.cfg.tracking.experiment)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    report = runs["report"].data.params
    assert report["cost.cpu_hour_usd"] == str(tiny_trial.cfg.cost.cpu_hour_usd)
    assert report["variants.plain.preset"] == "f4d8"
    assert not any(k.startswith("diffusion.") for k in report)
    evaluate = runs[f"evaluate@{PLAIN}-{SEED}"].data.params
    assert evaluate["sample.steps"] == "4" and evaluate["variant.name"] == "plain"
    assert evaluate["cell.name"] == "plain-0" and evaluate["cell.seed"] == "0"
    assert not any(k.startswith("trial.") for k in evaluate)  # a new seed reruns no old cell
