"""Prefect flows that drive the pipeline (`ldm run` starts `python -m flows.trial`).

Flow and task run logs go to Prefect's API, not the terminal (flows/logging.yml): the person
watching reads the stages' own lines, printed by the flow, and one line per failure.
"""

import os
from pathlib import Path

os.environ.setdefault("PREFECT_LOGGING_SETTINGS_PATH", str(Path(__file__).with_name("logging.yml")))
