"""The typed config: params.yaml is complete and valid; every fault names its key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from ldm import config, params_file
from ldm.config import Config, ConfigError
from ldm.paths import cell_name, cell_options, split_cell

REPO = Path(__file__).resolve().parents[1]


def field_names(model: type) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


def test_params_yaml_loads_and_spells_out_every_field() -> None:
    config.load(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(raw) == field_names(Config)
    for name, field in Config.model_fields.items():
        section = field.alias or name
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            assert set(raw[section]) == field_names(field.annotation), section


def test_variants_can_be_replaced_or_edited_but_not_an_unknown_key() -> None:
    only_plain = config.load(
        REPO / "params.yaml", ["variants={plain: {preset: f4d8, align: false}}"]
    )
    assert list(only_plain.variants) == ["plain"]
    edited = config.load(REPO / "params.yaml", ["variants.aligned.cos_margin=0.3"])
    assert edited.variant("aligned").cos_margin == 0.3
    assert edited.variant("plain").cos_margin == edited.align.cos_margin  # null: the align value
    with pytest.raises(ConfigError, match="resolution"):
        config.load(REPO / "params.yaml", ["resolution=64"])


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("variants={a b: {preset: f4d8, align: false}}", "cannot name a stage"),
        ("variants={x: {preset: f9d9, align: false}}", "variants.x.preset"),
        ("variants={x: {preset: f4d8}}", "variants.x.align"),
        ("align.phases=[{share: 0.5, vf_weight: 0.1, use_margins: false}]", "add up to 1"),
    ],
)
def test_bad_variants_and_phases_say_what_is_wrong(override: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        config.load(REPO / "params.yaml", [override])


def test_cells_are_every_variant_with_every_seed_in_dvcs_matrix_order() -> None:
    cfg = config.load(
        REPO / "params.yaml",
        ["variants={f16-vf: {preset: f4d8, align: true}, b: {preset: f4d8, align: false}}"]
        + ["trial.seeds=[3, 0]"],
    )
    assert cfg.cells() == ["f16-vf-3", "f16-vf-0", "b-3", "b-0"]
    # a variant's name may hold '-', a seed's never does: the last '-' splits them
    assert split_cell("f16-vf-3") == ("f16-vf", 3)
    assert split_cell(cell_name("b", 0)) == ("b", 0)
    assert cell_options("f16-vf-3") == "--variant f16-vf --seed 3"
    for bad in ("plain", "plain-", "-0", "plain-x"):
        with pytest.raises(ValueError, match="names no cell"):
            split_cell(bad)


@pytest.mark.parametrize(
    ("seeds", "named"),
    [
        ("[0, 1, 0]", "listed more than once"),
        ("[]", "trial.seeds"),
        ("[-1]", "trial.seeds.0"),
        ("[0.5]", "trial.seeds.0"),
    ],
)
def test_bad_seeds_are_refused_naming_the_setting(seeds: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named) as info:
        config.load(REPO / "params.yaml", [f"trial.seeds={seeds}"])
    assert "trial.seeds" in str(info.value)


def test_overrides_are_parsed_as_yaml_and_applied() -> None:
    cfg = config.load(
        REPO / "params.yaml",
        ["data.resolution=64", "validate.min_accepted_fraction=0.5", "tracking.experiment=other"],
    )
    assert cfg.data.resolution == 64
    assert cfg.validate_.min_accepted_fraction == 0.5
    assert cfg.tracking.experiment == "other"
    assert cfg.section("validate")["min_accepted_fraction"] == 0.5


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("data.resolutoin=64", "data.resolutoin"),
        ("dta.resolution=64", "dta"),
        ("data.resolution=big", "data.resolution"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("data.resolution.deep=1", "data.resolution.deep"),
        # evaluate reads metrics files DVC does not push: it cannot run on a GPU pool
        ("orchestration.gpu_stages=[evaluate]", "orchestration.gpu_stages"),
    ],
)
def test_bad_override_names_the_key(override: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        config.load(REPO / "params.yaml", [override])


@pytest.mark.parametrize("override", ["data.resolution", "=3"])
def test_malformed_override_says_the_expected_form(override: str) -> None:
    with pytest.raises(ConfigError, match="section.key=value"):
        config.load(REPO / "params.yaml", [override])


def test_unknown_missing_and_mistyped_keys_in_the_file(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["resolutoin"] = 64
    del raw["cost"]["gpu_hour_usd"]
    raw["validate"]["min_side"] = "small"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert "data.resolutoin" in message
    assert "cost.gpu_hour_usd" in message
    assert "validate.min_side" in message


def test_missing_or_broken_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(broken)


def test_config_is_frozen() -> None:
    cfg = config.load(REPO / "params.yaml")
    with pytest.raises(ValidationError, match="frozen"):
        cfg.data.resolution = 7  # type: ignore[misc]


def test_write_overrides_keeps_comments_and_validates_first(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    before = path.read_text()
    with pytest.raises(ConfigError, match="data.resolution"):
        params_file.write_overrides(path, ["data.resolution=huge"])
    assert path.read_text() == before  # nothing written when the result would be invalid

    changes = params_file.write_overrides(path, ["data.resolution=64"])
    assert changes == ["params.yaml: data.resolution: 32 -> 64"]
    after = path.read_text()
    assert "# side of the square training images" in after
    assert config.load(path).data.resolution == 64
    assert after.replace("resolution: 64", "resolution: 32") == before


def test_every_preset_gives_a_valid_config(tmp_path: Path) -> None:
    import json

    from ldm.params_file import preset_values

    for preset in sorted((REPO / "presets").glob("*.yaml")):
        values = preset_values(REPO / "presets", preset.stem)
        cfg = config.load(REPO / "params.yaml", [f"{k}={json.dumps(v)}" for k, v in values.items()])
        assert cfg.data.resolution % 16 == 0, preset.name


def test_decisive_preset_trains_three_seeds_and_widens_the_guidance_sweep() -> None:
    import json

    from ldm.params_file import preset_values

    values = preset_values(REPO / "presets", "decisive")
    cfg = config.load(REPO / "params.yaml", [f"{k}={json.dumps(v)}" for k, v in values.items()])
    assert cfg.trial.seeds == [0, 1, 2] and len(cfg.evaluate.cfg_scales) > 3
    assert cfg.cells() == [f"{v}-{s}" for v in ("plain", "aligned") for s in (0, 1, 2)]
    on_paper = preset_values(REPO / "presets", "paper") | values  # `paper`, then `decisive`
    paper = config.load(REPO / "params.yaml", [f"{k}={json.dumps(v)}" for k, v in on_paper.items()])
    assert paper.trial.seeds == [0, 1, 2] and paper.diffusion.model == "B/1"


def test_paper_grid_is_the_papers_six_tokenizers_on_the_paper_setting() -> None:
    import json

    from ldm.params_file import preset_values

    values = preset_values(REPO / "presets", "paper-grid")
    cfg = config.load(REPO / "params.yaml", [f"{k}={json.dumps(v)}" for k, v in values.items()])
    grid = {(v.preset, v.align) for v in cfg.variants.values()}
    assert grid == {(f"f16d{d}", a) for d in (16, 32, 64) for a in (False, True)}
    assert cfg.data.resolution == 256 and cfg.align.foundation == "dinov2_vitl14"


def test_paper_preset_selects_the_papers_models() -> None:
    import json

    values = yaml.safe_load((REPO / "presets" / "paper.yaml").read_text())
    cfg = config.load(REPO / "params.yaml", [f"{k}={json.dumps(v)}" for k, v in values.items()])
    assert (cfg.data.resolution, cfg.diffusion.model) == (256, "B/1")
    assert {v.preset for v in cfg.variants.values()} == {"f16d32"}
    assert cfg.diffusion.betas == (0.9, 0.95) and cfg.diffusion.lr == 2e-4
    assert cfg.align.foundation == "dinov2_vitl14" and cfg.sample.shift == 0.3


def test_a_feature_network_a_tokenizer_was_aligned_to_is_refused_unless_allowed() -> None:
    params = REPO / "params.yaml"
    aligned_to_dinov2 = ["align.foundation=dinov2_vitl14", "evaluate.features=dinov2_vitl14"]
    with pytest.raises(ConfigError) as info:
        config.load(params, aligned_to_dinov2)
    for named in ("evaluate.features", "align.foundation", "'aligned'", "allow_self_graded"):
        assert named in str(info.value), named
    # A variant's own foundation is named as its setting.
    with pytest.raises(ConfigError, match=r"variants\.aligned\.foundation"):
        config.load(
            params, ["variants.aligned.foundation=dinov2_vitl14", "evaluate.features=dinov2_vitl14"]
        )
    # Allowed explicitly: loads, and says which variant is graded in its own space.
    cfg = config.load(params, [*aligned_to_dinov2, "evaluate.allow_self_graded=true"])
    assert "dinov2_vitl14" in cfg.trained_against("aligned")
    assert "dinov2_vitl14" not in cfg.trained_against("plain")  # plain aligns to nothing
