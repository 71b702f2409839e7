"""The harness users touch: the ``bench`` CLI, sweeps on Ray Tune, MLflow tracking, reports."""
