"""`python -m ldm ...`; also how a stage with world_size > 1 starts its ranks (stages/launch.py)."""

from ldm.cli import app

app()
