"""The stages: one file per stage, named after it, each one plain function (cfg, paths, tracker).

- `registry`: the stages in DAG order (`STAGES`, `stage_names`).
- `runner`: `run(stage, cfg, paths)`, the wrapper every stage shares: its MLflow run, params,
  cost, metrics file and artifacts; `launch`: a stage on several processes under torchrun.
- `inputs`: what a stage reads from earlier ones; `result`: what a stage returns;
  `trial_lock`: one trial per project at a time.
"""

from ldm.stages.registry import STAGES, Stage, stage_names
from ldm.stages.runner import run

__all__ = ["STAGES", "Stage", "run", "stage_names"]
