"""aeflow: the CLI (aeflow.cli) and the bottom layer (errors, model store, image I/O), plus the shipped models."""
