"""run_experiment: the files of a run, resume, divergence as a result."""

import json

import pytest
import torch

from dibregman.config import to_dict, with_overrides
from dibregman.presets import get_preset
from dibregman.run import run_experiment


def tiny(**overrides):
    return with_overrides(get_preset("gmm2d-tiny"), overrides)


def test_run_writes_its_files(tmp_path):
    cfg = tiny()
    reports = []
    result = run_experiment(cfg, tmp_path, on_report=lambda r, c: reports.append((r, c)))
    assert result.status == "finished" and result.generator_steps == cfg.train.generator_steps
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads(
        json.dumps(to_dict(cfg)))
    provenance = json.loads((tmp_path / "provenance.json").read_text())
    assert provenance["torch"] == torch.__version__ and "metric_protocol" in provenance
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert records[0]["step"] == 0 and "fd_n256" in records[0]
    assert [r["step"] for r in records[1:]] == list(range(2, 7, 2))
    assert {"weight_mean", "ratio_q50", "ratio_accuracy", "loss_dm"} <= set(records[-1])
    final = json.loads((tmp_path / "final_metrics.json").read_text())
    assert final["metrics"] == result.metrics
    assert {"fd_n512", "nll_n512", "modes_covered_n512", "precision_k3_n256",
            "recall_k3_n256", "mmd_n256"} <= set(result.metrics)
    assert (tmp_path / "samples.png").read_bytes()[:4] == b"\x89PNG"
    state = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=True)
    assert state["distiller"]["generator_step"] == 6
    assert reports[-1][0]["final"] and reports[-1][0]["status"] == "finished"
    assert [r["step"] for r, c in reports if c is not None] == [6]  # checkpoint_every = 3


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    cfg = tiny(**{"train.generator_steps": 8, "log_every": 1, "checkpoint_every": 2})
    reference = run_experiment(cfg, tmp_path / "reference")

    def stop_after_step_5(record, checkpoint):
        if record["step"] == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_experiment(cfg, tmp_path / "resumed", on_report=stop_after_step_5)
    assert not (tmp_path / "resumed" / "final_metrics.json").exists()
    resumed = run_experiment(cfg, tmp_path / "resumed")
    assert resumed.metrics == reference.metrics
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").open()]
    assert steps == list(range(0, 9))  # records after the step-4 checkpoint were rewritten once


def test_rerun_of_an_ended_run_returns_the_stored_result(tmp_path):
    first = run_experiment(tiny(), tmp_path)
    again = run_experiment(tiny(), tmp_path, on_report=lambda r, c: pytest.fail("retrained"))
    assert again == first


def test_different_config_in_same_directory_is_refused(tmp_path):
    run_experiment(tiny(), tmp_path)
    with pytest.raises(ValueError, match="different config"):
        run_experiment(tiny(seed=5), tmp_path)


def test_divergence_is_a_result(tmp_path):
    cfg = tiny(**{"train.lr": 1e12, "train.max_nonfinite_steps": 2,
                  "train.generator_steps": 200})
    result = run_experiment(cfg, tmp_path)
    assert result.status == "diverged"
    assert result.generator_steps < 200
    final = json.loads((tmp_path / "final_metrics.json").read_text())
    assert final["status"] == "diverged"


def test_gmm16d_tiny_runs_with_its_projection_picture(tmp_path):
    result = run_experiment(with_overrides(get_preset("gmm16d-tiny"), {}), tmp_path)
    assert result.status == "finished"
    assert result.metrics["modes_covered_n512"] <= 10
    assert (tmp_path / "samples.png").exists()
