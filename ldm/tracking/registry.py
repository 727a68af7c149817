"""The model registry: every cell's generator (a variant, one training seed) as a version of one
registered model.

A version carries, as tags, what a reviewer and the promotion gates need without opening any
file: the variant and seed, its key metrics (each distance named after its feature network), its
cost, the numbers the gates read (`gate_values`, JSON) and where it came from (data manifest, git
commit, dvc.lock, the trial's run). Aliases (`candidate`, `staging`, `production`) say which
version is used; MLflow 3's registry stages are deprecated and never touched.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ldm.config import SampleConfig
from ldm.errors import LdmError
from ldm.records import EvaluateRecord
from ldm.report.gates import gate_intervals, gate_values
from ldm.tracking.runs import store_client, tracking_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

GATE_VALUES_TAG = "gate_values"
MAX_TAG_CHARS = 5000  # what MLflow's stores keep of a tag value
GATE_INTERVALS_TAG = "gate_intervals"  # [lo, hi] per gate: a gate reads its far end
IDENTITY_TAG = "generator_sha256"
MODEL_TYPE = "ldm-generator"


@dataclass(frozen=True)
class Provenance:
    """Where a generator came from, as the report stage knows it."""

    run_id: str  # the trial's parent run (the report's own run when it runs alone); holds the model
    data_manifest_sha256: str
    git_commit: str
    dvc_lock_sha256: str
    decision: str = ""  # the registering trial's verdict sentence; "" outside a report


@dataclass(frozen=True)
class Registration:
    version: str
    created: bool  # False: these weights and sampler settings were registered before


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def generator_identity(tokenizer: Path, diffusion: Path, sampler: SampleConfig) -> dict[str, str]:
    """The weights' hashes, and one hash over them and the sampler settings bundled with them:
    the same weights sampled differently give other images and other metrics."""
    hashes = {
        "tokenizer_sha256": file_sha256(tokenizer / "model.safetensors"),
        "diffusion_sha256": file_sha256(diffusion / "model.safetensors"),
    }
    payload = json.dumps({**hashes, "sampler": sampler.model_dump(mode="json")}, sort_keys=True)
    return {**hashes, IDENTITY_TAG: hashlib.sha256(payload.encode()).hexdigest()}


def metric_tags(record: EvaluateRecord) -> dict[str, str]:
    """The key numbers of an evaluation, as version tags; distances carry their network's name."""
    gen, tok = record.generation, record.tokenizer
    values = {
        f"gfd_{gen.feature_net}": gen.fd,
        "relative_fd": record.reference.relative(gen.fd),
        "precision": gen.precision,
        "recall": gen.recall,
        "psnr": tok.psnr,
        f"rfd_{tok.feature_net}": tok.rfd,
        "cost_usd": record.cost.total.usd,
    }
    tags = {key: f"{value:.6g}" for key, value in values.items()}
    tags["feature_net"] = gen.feature_net
    tags[GATE_VALUES_TAG] = json.dumps(gate_values(record), sort_keys=True)
    tags[GATE_INTERVALS_TAG] = json.dumps(gate_intervals(record), sort_keys=True)
    return tags


def find_version(client: MlflowClient, model_name: str, identity: str) -> ModelVersion | None:
    for found in all_versions(client, model_name):
        if found.tags.get(IDENTITY_TAG) == identity:
            return found
    return None


def all_versions(client: MlflowClient, model_name: str) -> list[ModelVersion]:
    """Every version of the registered model, newest first; none when it does not exist yet."""
    quoted = model_name.replace("'", "\\'")
    found = client.search_model_versions(f"name = '{quoted}'")
    return sorted(found, key=lambda v: int(v.version), reverse=True)


def aliases_by_version(client: MlflowClient, model_name: str) -> dict[str, list[str]]:
    """{"3": ["candidate", "staging"], ...}: the registered model's aliases by version."""
    held: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(model_name).aliases.items():
        held.setdefault(str(version), []).append(alias)
    return {version: sorted(names) for version, names in held.items()}


def register_generator(
    root: Path,
    model_name: str,
    tokenizer: Path,
    diffusion: Path,
    sampler: SampleConfig,
    record: EvaluateRecord,
    provenance: Provenance,
) -> Registration:
    """Register one cell's generator (a variant trained with one seed) as a new version, or
    find the version that holds the same weights and sampler settings (its metric tags are then
    brought up to `record`)."""
    for folder in (tokenizer, diffusion):
        for name in ("model.safetensors", "config.json"):
            if not (folder / name).is_file():
                raise LdmError(
                    f"{folder / name} not found: the release of {folder.name} is missing"
                )
    _check_pair(tokenizer, diffusion)
    client = store_client(root)
    identity = generator_identity(tokenizer, diffusion, sampler)
    metrics = metric_tags(record)
    if provenance.decision:  # the latest trial's verdict travels with the version it judged
        metrics["decision"] = provenance.decision[:MAX_TAG_CHARS]
    existing = find_version(client, model_name, identity[IDENTITY_TAG])
    if existing is not None:
        for key, value in metrics.items():
            if existing.tags.get(key) != value:
                client.set_model_version_tag(model_name, existing.version, key, value)
        for key in existing.tags:  # distances measured in a feature network no longer used
            if key.startswith(("gfd_", "rfd_")) and key not in metrics:
                client.delete_model_version_tag(model_name, existing.version, key)
        return Registration(str(existing.version), created=False)

    tags = {
        "variant": record.variant,
        "seed": str(record.seed),
        **identity,
        **metrics,
        "data_manifest_sha256": provenance.data_manifest_sha256,
        "git_commit": provenance.git_commit,
        "dvc_lock_sha256": provenance.dvc_lock_sha256,
        "trial_run_id": provenance.run_id,
    }
    model_id = _log_generator(client, tokenizer, diffusion, sampler, record, provenance)
    _ensure_registered_model(client, model_name)
    version = client.create_model_version(
        model_name,
        source=f"models:/{model_id}",
        run_id=provenance.run_id,
        tags=tags,
        description=f"Generator of variant `{record.variant}`, training seed {record.seed} "
        f"(run {provenance.run_id}).",
        model_id=model_id,
    )
    # The link the UI follows from the run's logged model to its registered version.
    link = [{"name": model_name, "version": str(version.version)}]
    client.set_logged_model_tags(model_id, {"mlflow.modelVersions": json.dumps(link)})
    return Registration(str(version.version), created=True)


def _check_pair(tokenizer: Path, diffusion: Path) -> None:
    """The DiT must have been trained on this tokenizer's latents (same channels)."""
    tok = json.loads((tokenizer / "config.json").read_text())
    dit = json.loads((diffusion / "config.json").read_text())
    d_tok, d_dit = tok["arch"]["latent_channels"], dit["model"]["latent_channels"]
    if d_tok != d_dit:
        raise LdmError(
            f"{diffusion} was trained on {d_dit}-channel latents but {tokenizer} makes "
            f"{d_tok}: pass the tokenizer of the same variant"
        )


def _log_generator(
    client: MlflowClient,
    tokenizer: Path,
    diffusion: Path,
    sampler: SampleConfig,
    record: EvaluateRecord,
    provenance: Provenance,
) -> str:
    """Save the pyfunc model and upload it as a LoggedModel of the run; its id."""
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    from ldm.tracking.pyfunc import save_generator

    experiment_id = client.get_run(provenance.run_id).info.experiment_id
    logged = client.create_logged_model(
        experiment_id,
        name=f"generator-{record.cell}",
        source_run_id=provenance.run_id,
        tags={"variant": record.variant, "seed": str(record.seed)},
        model_type=MODEL_TYPE,
    )
    try:
        meta = Model(
            artifact_path=logged.artifact_location,
            model_uuid=logged.model_id,
            run_id=provenance.run_id,
            model_id=logged.model_id,
        )
        with tempfile.TemporaryDirectory(prefix="ldm-register-") as tmp:
            local = Path(tmp) / "model"
            save_generator(local, tokenizer, diffusion, sampler, mlflow_model=meta)
            client.log_model_artifacts(logged.model_id, str(local))
        client.log_outputs(provenance.run_id, [LoggedModelOutput(logged.model_id, step=0)])
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    client.finalize_logged_model(logged.model_id, "READY")
    return logged.model_id


def _ensure_registered_model(client: MlflowClient, model_name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(model_name, description=INTRO)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


INTRO = (
    "Generators of ldm-poc trials: one version per variant, training seed and trained weights. "
    "Aliases: `candidate` (the report's recommendation), `staging`, `production`; "
    "`previous-<alias>` is the version `ldm rollback` gives the alias back to."
)


def resolve_alias(client: MlflowClient, model_name: str, alias: str) -> ModelVersion:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        raise LdmError(
            f"no version of {model_name} holds the alias {alias!r}; "
            "see `ldm models`, and `ldm promote VERSION --to STAGE`"
        ) from None


def get_version(client: MlflowClient, model_name: str, version: str) -> ModelVersion:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(model_name, version)
    except MlflowException:
        raise LdmError(f"{model_name} has no version {version!r}; see `ldm models`") from None


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """`models:/name@alias` or `models:/name/3` -> (name, alias, version)."""
    if not uri.startswith("models:/"):
        raise LdmError(f"{uri!r} is not a registry URI; use models:/NAME@ALIAS or models:/NAME/N")
    rest = uri.removeprefix("models:/")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        return name, alias, None
    name, _, version = rest.rpartition("/")
    if not name or not version.isdigit():
        raise LdmError(f"{uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    return name, None, version


def load_registered(root: Path, uri: str):  # noqa: ANN201  (an mlflow PyFuncModel)
    """The generator a registry URI names, loaded as a pyfunc model, and its version."""
    import mlflow
    from mlflow.artifacts import download_artifacts

    client = store_client(root)
    name, alias, number = parse_model_uri(uri)
    found = resolve_alias(client, name, alias) if alias else get_version(client, name, number)
    location = client.get_model_version_download_uri(name, found.version)
    if location.startswith("file://"):  # the local store: load in place, no copy of the weights
        from urllib.parse import unquote, urlparse

        local = unquote(urlparse(location).path)
    else:
        local = download_artifacts(artifact_uri=location, tracking_uri=tracking_uri(root))
    return mlflow.pyfunc.load_model(str(local)), found
