"""Several processes for one stage: a stage command relaunches itself under `torchrun`.

`ldm train-diffusion --variant V --seed S` with `diffusion.world_size: N > 1` (or the tokenizer's)
`python -m torch.distributed.run --standalone --nproc_per_node N -m ldm <the same command>` and
waits for it, so `dvc repro` and `ldm run` see one command like any stage. The launching process
keeps the stage's record: it opens the MLflow run (rank 0 logs its curves into it), meters the
cost of the whole job, and reads one report per rank from a folder named in LDM_RANK_REPORTS:
each rank's device and outcome, and rank 0's metrics, artifacts and the hours its resume point
carried from earlier attempts (summed over the ranks by the loop). The reports also carry the
ranks' exit codes back, which torchrun itself folds into 1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ldm.cost import DeviceUse, Hours, device_of_this_process
from ldm.errors import LdmError
from ldm.stages.result import StageResult

RANK_REPORTS_ENV = "LDM_RANK_REPORTS"  # folder the ranks write their reports to
STAGE_RUN_ENV = "LDM_STAGE_RUN_ID"  # the MLflow run rank 0 logs into
WORLD_SIZE_SECTION = {"train_tokenizer": "tokenizer", "train_diffusion": "diffusion"}
STOP_GRACE_SECONDS = 30  # torchrun's own grace to stop its ranks, and some


class RanksFailed(Exception):
    """A rank died of something unexpected; its traceback is in the output above."""


def world_size(stage: str, section: Callable[[str], dict[str, Any]]) -> int:
    """Processes `stage` runs on: its section's world_size, 1 for single-process stages."""
    name = WORLD_SIZE_SECTION.get(stage)
    return int(section(name)["world_size"]) if name else 1


def check_devices(stage: str, section: Callable[[str], dict[str, Any]]) -> None:
    """One GPU per rank: more ranks than visible GPUs is a setup error, said before starting."""
    import torch  # device_count asks the driver without starting CUDA in this process

    name = WORLD_SIZE_SECTION[stage]
    wanted, device = int(section(name)["world_size"]), section(name)["device"]
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    on_gpus = device == "cuda" or (device == "auto" and visible > 0)
    if on_gpus and visible < wanted:
        raise LdmError(
            f"{name}.world_size is {wanted} but {visible} GPU(s) are visible: lower "
            f"{name}.world_size (one process per GPU) or make more GPUs visible"
        )


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def launched_here() -> bool:
    """A rank of a job this module started (not a `torchrun` run by hand)."""
    return under_torchrun() and RANK_REPORTS_ENV in os.environ


def torchrun_command(nprocs: int, command: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nprocs),
        "-m",
        "ldm",
        *command,
    ]


def relaunch(command: list[str], nprocs: int, run_id: str) -> tuple[StageResult, DeviceUse]:
    """Run `ldm <command>` on `nprocs` ranks; rank 0's result and the devices all ranks used."""
    with tempfile.TemporaryDirectory(prefix="ldm-ranks-") as folder:
        env = os.environ | {RANK_REPORTS_ENV: folder, STAGE_RUN_ENV: run_id}
        proc = subprocess.Popen(torchrun_command(nprocs, command), env=env)
        try:
            code = proc.wait()
        except BaseException:  # Ctrl+C, or the stage timed out: torchrun stops its ranks
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        reports = [json.loads(p.read_text()) for p in sorted(Path(folder).glob("rank-*.json"))]
    return outcome(reports, nprocs, code)


def outcome(
    reports: list[dict[str, Any]], nprocs: int, exit_code: int
) -> tuple[StageResult, DeviceUse]:
    """Rank 0's result and the devices used; the first failure, raised as the rank raised it."""
    for report in reports:
        if report["outcome"] == "user_error":
            raise LdmError(report["message"])
    done = {r["rank"]: r for r in reports if r["outcome"] == "done"}
    if exit_code != 0 or len(done) != nprocs:
        failed = sorted(set(range(nprocs)) - set(done))
        raise RanksFailed(
            f"rank(s) {failed} of {nprocs} failed (torchrun exit code {exit_code}); "
            "see the messages above"
        )
    main = done[0]
    gpus = [r for r in reports if r["device_kind"] != "cpu"]
    devices = DeviceUse(
        main["device_kind"], len(gpus), tuple(r["device_uuid"] for r in gpus if r["device_uuid"])
    )
    artifacts = [Path(a) for a in main["artifacts"]]
    carried = Hours.from_state(main.get("carried"))
    return StageResult(main["metrics"], artifacts, carried=carried), devices


def run_rank(body: Callable[[Any], StageResult], tracker: Any) -> StageResult:
    """Run one rank's share of the stage and report how it went (see `outcome`)."""
    rank = int(os.environ["RANK"])
    report: dict[str, Any] = {"rank": rank, "outcome": "done", "metrics": {}, "artifacts": []}
    try:
        result = body(tracker)
        if rank == 0:
            report |= {"metrics": result.metrics, "artifacts": [str(a) for a in result.artifacts]}
            report["carried"] = result.carried.state() if result.carried else None
        return result
    except LdmError as err:
        report |= {"outcome": "user_error", "message": str(err)}
        raise
    except BaseException:
        report["outcome"] = "unexpected"
        raise
    finally:
        used = device_of_this_process()
        report |= {"device_kind": used.kind, "device_uuid": (used.uuids or (None,))[0]}
        path = Path(os.environ[RANK_REPORTS_ENV]) / f"rank-{rank:04d}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(report, default=str))
        os.replace(tmp, path)
