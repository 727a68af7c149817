"""Prefect flows that drive the pipeline (`ldm run` starts `python -m flows.trial`).

- trial.py: the trial, one task per stage in DAG order (`python -m flows.trial`).
- pool.py: the trial's half of a stage sent to a GPU work pool (`orchestration.gpu_pool`).
- remote.py: the GPU host's half of such a stage, and `ldm deploy` (`python -m flows.remote`).
- stage_run.py: how a stage runs under any of them: every DVC command (`dvc`, `repro`), the
  stage's environment, its lines, and `StageFailed`. It imports none of the others.

Flow and task run logs go to Prefect's API, not the terminal (flows/logging.yml): the person
watching reads the stages' own lines, printed by the flow, and one line per failure.
"""

import os
from pathlib import Path

os.environ.setdefault("PREFECT_LOGGING_SETTINGS_PATH", str(Path(__file__).with_name("logging.yml")))
