"""The result contract: every evaluator reports exactly the metrics it declares, one headline,
one status vocabulary, one final record; and the declarations reach provenance and sweeps."""

import json
import math

import pytest
import torch

from dibregman.config import Config, EvalConfig
from dibregman.evaluate import curve_metrics, declared_metrics
from dibregman.evaluators import MixtureEvaluator, VectorEvaluator
from dibregman.presets import get_preset, preset_names
from dibregman.results import (
    ELAPSED,
    Direction,
    MetricSpec,
    Role,
    Stage,
    Status,
    final_record,
    headline,
)
from dibregman.run import run_experiment
from dibregman.teachers import teacher_for

TINY_EVAL = EvalConfig(n_curve=256, n_final=512, n_pr=256, n_mmd=256)


def keys(specs: list[MetricSpec], stage: Stage) -> set[str]:
    return {s.key for s in specs if s.stage is stage and s.role is not Role.COST}


@pytest.mark.parametrize("evaluator", [VectorEvaluator, MixtureEvaluator])
def test_vector_evaluators_report_exactly_their_declared_keys(evaluator):
    teacher = teacher_for(get_preset("gmm2d"))
    judge = evaluator(teacher, TINY_EVAL)
    declared = evaluator.metrics(TINY_EVAL)
    curve = judge.curve(teacher.sample(TINY_EVAL.n_curve, torch.Generator().manual_seed(5)))
    final = judge.final(teacher.sample(TINY_EVAL.n_final, torch.Generator().manual_seed(6)))
    assert set(curve) == keys(declared, Stage.CURVE)
    assert set(final) == keys(declared, Stage.FINAL)
    assert all(math.isfinite(v) for v in [*curve.values(), *final.values()])


def test_only_the_mixture_evaluator_declares_log_density_metrics():
    vector = {s.name for s in VectorEvaluator.metrics(TINY_EVAL)}
    mixture = {s.name for s in MixtureEvaluator.metrics(TINY_EVAL)}
    assert mixture - vector == {"nll", "modes_covered", "mode_tv", "off_mode"}
    assert vector <= mixture


def test_exact_teacher_samples_score_near_zero_fd_on_both_vector_evaluators():
    """Declared directions hold: teacher samples are near-perfect (FD ~ 0, precision ~ 1)."""
    teacher = teacher_for(get_preset("gmm2d"))
    samples = teacher.sample(4000, torch.Generator().manual_seed(9))
    for evaluator in (VectorEvaluator, MixtureEvaluator):
        cfg = EvalConfig(n_final=4000, n_pr=1000, n_mmd=1000)
        final = evaluator(teacher, cfg).final(samples)
        assert final["fd_n4000"] < 0.01 and final["precision_k3_n1000"] > 0.9


@pytest.mark.parametrize("preset", [p for p in preset_names() if not p.endswith("-tiny")])
def test_every_preset_declares_one_final_headline_and_curve_metrics(preset):
    declared = declared_metrics(get_preset(preset))
    headlines = [s for s in declared if s.role is Role.HEADLINE and s.stage is Stage.FINAL]
    assert len(headlines) == 1 and headline(declared) == headlines[0]
    assert curve_metrics(get_preset(preset))
    assert len({s.key for s in declared}) == len(declared)  # keys are unique


def test_fid_is_the_headline_when_it_is_measured():
    cfg = get_preset("mnist")
    assert cfg.eval.fid_n > 0 and headline(declared_metrics(cfg)).name == "fid"
    assert headline(declared_metrics(get_preset("digits"))).name == "fd_cls"


def test_metric_spec_direction_decides_which_value_is_better():
    lower = MetricSpec("fd_n8", "fd", "FD (n=8)", 8, Direction.LOWER, Role.HEADLINE)
    higher = MetricSpec("recall_n8", "recall", "recall", 8, Direction.HIGHER, Role.DIAGNOSTIC)
    assert lower.better(0.1, 0.2) and not lower.better(0.2, 0.1)
    assert higher.better(0.9, 0.5) and not higher.better(0.5, 0.9)
    assert Direction.LOWER.mode == "min" and Direction.HIGHER.mode == "max"
    assert MetricSpec.from_dict(json.loads(json.dumps(lower.to_dict()))) == lower


def test_status_is_its_word_in_json_and_formatting():
    assert json.dumps({"s": Status.DIVERGED}) == '{"s": "diverged"}'
    assert f"{Status.FINISHED}" == "finished" and Status("stopped") is Status.STOPPED
    assert {"failed": 1}[Status.FAILED] == 1


def test_final_record_names_the_elapsed_time_once_and_derives_steps_per_second():
    record = final_record(Status.FINISHED, {"fd_n8": 0.5}, 100, 20.0)
    assert record == {"status": "finished", "generator_steps": 100, ELAPSED: 20.0,
                      "steps_per_s": 5.0, "metrics": {"fd_n8": 0.5}}


def test_run_writes_its_declarations_and_reports_one_final_record(tmp_path):
    cfg = get_preset("gmm2d-tiny")
    reports = []
    result = run_experiment(cfg, tmp_path / "run", on_report=lambda r, c: reports.append(r))
    provenance = json.loads((tmp_path / "run" / "provenance.json").read_text())
    declared = [MetricSpec.from_dict(d) for d in provenance["metrics"]]
    assert declared == declared_metrics(cfg)
    final_file = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert final_file == result.record()
    assert set(final_file["metrics"]) == keys(declared, Stage.FINAL)
    last = reports[-1]
    assert last["final"] and last["status"] == Status.FINISHED
    assert last[ELAPSED] == final_file[ELAPSED] and "run_time_s" not in last
    assert {s.key for s in declared if s.stage is Stage.FINAL} <= set(last)  # costs included
    curve_keys = keys(declared, Stage.CURVE)
    assert all(curve_keys <= set(r) for r in reports[:-1] if r["step"] % cfg.eval.every == 0)


def test_config_default_teacher_declares_mixture_metrics():
    assert {s.name for s in declared_metrics(Config())} >= {"fd", "nll", "modes_covered"}


@pytest.mark.parametrize("evaluator", [VectorEvaluator, MixtureEvaluator])
def test_non_finite_samples_give_nan_for_every_declared_curve_metric(evaluator):
    judge = evaluator(teacher_for(get_preset("gmm2d")), TINY_EVAL)
    samples = torch.zeros(TINY_EVAL.n_curve, 2)
    samples[3, 1] = float("nan")
    curve = judge.curve(samples)
    assert set(curve) == keys(evaluator.metrics(TINY_EVAL), Stage.CURVE)
    assert all(math.isnan(v) for v in curve.values())
