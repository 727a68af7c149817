"""`python -m ldm ...`; also how a stage with world_size > 1 starts its ranks (ldm/launch.py)."""

from ldm.cli import app

app()
