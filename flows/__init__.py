"""Prefect flows: the trial's orchestration. No model code lives here; stages run through DVC."""
