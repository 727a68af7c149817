"""The layers and names DESIGN.md asks for: one stage name everywhere, imports pointing down."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from ldm.cli import app
from ldm.config import Config, load
from ldm.paths import Paths
from ldm.stages import STAGES, stage_names

REPO = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def spec_of(stage: str) -> dict:
    """A stage's body: its own entry (a per-variant stage is a DVC `matrix` stage, one per
    cell, with the matrix beside the body)."""
    return DVC[stage]


def test_stage_names_agree_across_dvc_cli_and_library() -> None:
    assert list(DVC) == list(STAGES)
    commands = {command.name or command.callback.__name__ for command in app.registered_commands}
    for stage, spec in STAGES.items():
        command = stage.replace("_", "-")
        assert command in commands
        if spec.per_variant:  # a cell's seed comes from its matrix entry, not trial.seeds
            assert DVC[stage]["matrix"] == {"variant": "${variants}", "seed": "${trial.seeds}"}
            assert spec_of(stage)["cmd"] == (
                f"ldm {command} --variant ${{item.variant}} --seed ${{item.seed}}"
            )
            assert not any(p.startswith("trial") for p in spec_of(stage)["params"])
        else:
            assert spec_of(stage)["cmd"] == f"ldm {command}"


def test_flow_runs_every_dvc_stage_in_order() -> None:
    cfg = load(REPO / "params.yaml", ["trial.seeds=[0, 2]"])
    expected = []
    for stage in DVC:
        if "matrix" in DVC[stage]:  # DVC's matrix order: the variants in params order, then seeds
            expected += [f"{stage}@{v}-{s}" for v in cfg.variants for s in (0, 2)]
        else:
            expected.append(stage)
    assert stage_names(cfg) == expected
    assert expected[3:5] == ["train_tokenizer@plain-0", "train_tokenizer@plain-2"]


def test_dvc_params_name_existing_config_keys() -> None:
    sections = {
        field.alias or name: field.annotation for name, field in Config.model_fields.items()
    }
    for stage in DVC:
        for entry in spec_of(stage).get("params", []):
            section, _, key = entry.partition(".")
            assert section in sections, (stage, entry)
            if section == "variants":  # a mapping: `variants.${item.variant}` names one entry
                continue
            model = sections[section]
            for part in key.split(".") if key else []:  # `evaluate.bootstrap.level`
                assert part in model.model_fields, (stage, entry)
                model = model.model_fields[part].annotation


def test_dvc_outputs_are_the_paths_the_stages_write() -> None:
    paths = Paths(REPO)
    # An entry is a path, or {path: {persist: true}}.
    outs = {o if isinstance(o, str) else next(iter(o)) for s in DVC for o in spec_of(s)["outs"]}
    for path in (paths.manifest, paths.rejected, paths.prepared):
        assert str(path.relative_to(REPO)) in outs
    cell = "${item.variant}-${item.seed}"  # as a matrix names a cell: `plain-0`
    assert str(paths.tokenizer(cell).relative_to(REPO)) in outs
    assert str(paths.latents(cell).relative_to(REPO)) in outs
    assert str(paths.diffusion(cell).relative_to(REPO)) in outs
    assert str(paths.evaluation(cell).relative_to(REPO)) in outs
    metrics = {next(iter(m)) for stage in DVC for m in spec_of(stage).get("metrics", [])}
    expected = {
        str(paths.stage_metrics(f"{s}@{cell}" if spec.per_variant else s).relative_to(REPO))
        for s, spec in STAGES.items()
        if spec.writes_metrics_file
    } | {str(paths.convergence(cell).relative_to(REPO))}
    assert metrics == expected
    assert "data/validated/manifest.parquet" in DVC["prepare"]["deps"]


# The run wrapper every stage shares (CLI, config, tracking, cost metering, progress) is not a
# code dep: changing how a stage is recorded or started does not change what it computes.
SHELL = {
    "ldm/__init__.py",
    "ldm/config.py",
    "ldm/cost.py",
    "ldm/errors.py",
    "ldm/nested.py",
    "ldm/paths.py",
    "ldm/progress.py",
    "ldm/tracker.py",
    "ldm/stages/__init__.py",
    "ldm/stages/launch.py",
    "ldm/stages/registry.py",
    "ldm/stages/result.py",
    "ldm/stages/runner.py",
}


def is_shell(rel: str) -> bool:
    return rel in SHELL or rel.startswith(("ldm/cli/", "ldm/tracking/"))


def module_file(name: str) -> Path | None:
    base = REPO / Path(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else None


def ldm_imports(path: Path) -> set[str]:
    """Every `ldm` module `path` imports anywhere (also inside functions), submodules included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "ldm"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ldm":
            found.add(node.module)
            found |= {
                f"{node.module}.{alias.name}"
                for alias in node.names
                if module_file(f"{node.module}.{alias.name}")
            }
    return found


def code_closure(module: str) -> set[str]:
    """The files a stage's module runs: its imports, theirs, and the packages holding them."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run too
        path = module_file(name)
        if path is None or str(path.relative_to(REPO)) in seen:
            continue
        rel = str(path.relative_to(REPO))
        seen.add(rel)
        if not is_shell(rel):
            todo += ldm_imports(path)
    return {rel for rel in seen if not is_shell(rel)}


def test_each_stage_depends_on_exactly_the_code_it_runs() -> None:
    for stage, spec in STAGES.items():
        listed = set()
        for dep in spec_of(stage)["deps"]:
            if dep.startswith("ldm/"):
                target = REPO / dep
                files = target.rglob("*.py") if target.is_dir() else [target]
                listed |= {str(f.relative_to(REPO)) for f in files}
        assert listed == code_closure(spec.module), stage


def test_stage_runs_log_the_sections_their_dvc_params_name(tmp_path: Path) -> None:
    """dvc.yaml's params are the one list (tests/test_stage_deps.py checks them against what
    each stage reads); a stage's MLflow run logs the sections they name, whole."""
    from ldm.stages.runner import logged_params

    cfg = load(REPO / "params.yaml")
    report = logged_params("report", STAGES["report"], (), cfg, Paths(REPO))
    assert list(report) == list(dict.fromkeys(p.split(".")[0] for p in DVC["report"]["params"]))
    assert report["report"] == cfg.section("report")
    encode = logged_params("encode@plain-0", STAGES["encode"], ("plain-0",), cfg, Paths(REPO))
    assert list(encode) == ["tokenizer", "evaluate", "prepare", "variant", "cell"]
    assert encode["variant"] == {"name": "plain"} | cfg.section("variants")["plain"]
    assert encode["cell"] == {"name": "plain-0", "seed": 0}
    tokenizer = logged_params(
        "train_tokenizer@plain-0", STAGES["train_tokenizer"], ("plain-0",), cfg, Paths(REPO)
    )
    assert "variants" not in tokenizer and "trial" not in tokenizer  # its own: `variant`, `cell`
    assert report["trial"] == {"seeds": [0]}
    bare = logged_params("validate", STAGES["validate"], (), cfg, Paths(tmp_path))  # no dvc.yaml
    assert set(bare) == set(cfg.to_dict()) - {"variants"}


def test_ldm_never_imports_prefect_and_only_tracking_imports_mlflow() -> None:
    for path in (REPO / "ldm").rglob("*.py"):
        modules = imported_modules(path)
        assert "prefect" not in modules, path
        assert "flows" not in modules, path
        if "tracking" not in path.relative_to(REPO / "ldm").parts:
            assert "mlflow" not in modules, path


def test_flows_hold_no_model_code() -> None:
    for path in (REPO / "flows").rglob("*.py"):
        assert not {"torch", "numpy", "PIL", "polars"} & imported_modules(path), path


def test_source_files_stay_small() -> None:
    for path in [*(REPO / "ldm").rglob("*.py"), *(REPO / "flows").rglob("*.py")]:
        assert len(path.read_text().splitlines()) <= 400, path


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)
    assert "make test" in readme and "make run" in readme


def test_git_does_not_ignore_dvc_lock(tmp_path: Path) -> None:
    """DVC refuses to write a git-ignored dvc.lock: every trial would stop at its first stage."""
    import shutil
    import subprocess

    shutil.copy(REPO / ".gitignore", tmp_path / ".gitignore")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    ignored = subprocess.run(["git", "check-ignore", "-q", "dvc.lock"], cwd=tmp_path)
    assert ignored.returncode == 1, ".gitignore matches dvc.lock"
