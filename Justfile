# Recipes for harness. `just --list` shows them.

venv := ".venv/bin"

# Create .venv and install harness with its test tools.
setup:
    python3 -m venv .venv && {{venv}}/pip install -e '.[dev]'

# Run the test suite (offline).
test:
    {{venv}}/python -m pytest

# List the experiments.
list:
    {{venv}}/harness list

# Train every variant of an experiment: just run exp_lenet_vs_alexnet --set epochs=2
run name *args:
    {{venv}}/harness run {{name}} {{args}}

# Open the MLflow UI on the store `harness run` writes to (default sqlite mlflow.db, artifacts in ./mlruns).
ui port="5000" *args:
    {{venv}}/harness ui --port {{port}} {{args}}

# Tune one variant with Optuna: just tune quickstart --trials 20
tune name *args:
    {{venv}}/harness tune {{name}} {{args}}

# Compare the variants of the latest run, from MLflow: just compare quickstart --format markdown
compare name *args:
    {{venv}}/harness compare {{name}} {{args}}

# Recent runs of an experiment, how they ended and how to continue them: just runs quickstart
runs name *args:
    {{venv}}/harness runs {{name}} {{args}}

# Throughput benchmark: harness vs tutorial loop vs compute floor (writes bench-results.json).
bench *args:
    {{venv}}/harness bench {{args}}
