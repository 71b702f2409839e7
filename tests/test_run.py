"""run_experiment: the files of a run, resume, divergence as a result."""

import json
import math

import pytest
import torch
from PIL import Image

from dibregman.config import to_dict, with_overrides
from dibregman.distill import Distiller
from dibregman.metrics import mode_stats
from dibregman.presets import get_preset
from dibregman.run import run_experiment
from dibregman.teachers import teacher_for


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
    # every log_every (2) steps and every evaluation (eval.every 3): none is lost
    assert [r["step"] for r in records[1:]] == [2, 3, 4, 6]
    assert [r["step"] for r in records if "fd_n256" in r] == [0, 3, 6]
    assert {"weight_mean", "ratio_q50", "ratio_accuracy", "loss_dm"} <= set(records[-1])
    final = json.loads((tmp_path / "final_metrics.json").read_text())
    assert final["metrics"] == result.metrics
    assert {"fd_n512", "nll_n512", "modes_covered_n512", "precision_k3_n256",
            "recall_k3_n256", "mmd_n256"} <= set(result.metrics)
    assert (tmp_path / "samples.png").read_bytes()[:4] == b"\x89PNG"
    state = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=True)
    assert state["distiller"]["generator_step"] == 6
    assert reports[-1][0]["final"] and reports[-1][0]["status"] == "finished"
    # checkpoint_every = 3: at the records of steps 3 and 6
    assert [r["step"] for r, c in reports if c is not None] == [3, 6]


class Interrupt(Exception):
    pass


def stop_after_step_5(record, checkpoint):
    """An ``on_report`` callback that interrupts a run at its first record from step 5 on."""
    if record["step"] >= 5:
        raise Interrupt


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    cfg = tiny(**{"train.generator_steps": 8, "log_every": 1, "checkpoint_every": 2})
    reference = run_experiment(cfg, tmp_path / "reference")

    with pytest.raises(Interrupt):
        run_experiment(cfg, tmp_path / "resumed", on_report=stop_after_step_5)
    assert not (tmp_path / "resumed" / "final_metrics.json").exists()
    resumed = run_experiment(cfg, tmp_path / "resumed")
    assert resumed.metrics == reference.metrics
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").open()]
    assert steps == list(range(0, 9))  # records after the step-4 checkpoint were rewritten once


def test_a_last_line_cut_short_by_a_kill_does_not_block_the_resume(tmp_path):
    """A kill mid-write leaves half a JSON line at the end of metrics.jsonl: the resume drops
    it, continues from the checkpoint and ends with the uninterrupted result."""
    cfg = tiny(**{"train.generator_steps": 8, "log_every": 1, "checkpoint_every": 2})
    reference = run_experiment(cfg, tmp_path / "reference")

    with pytest.raises(Interrupt):
        run_experiment(cfg, tmp_path / "resumed", on_report=stop_after_step_5)
    with (tmp_path / "resumed" / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 6, "loss_d')
    assert run_experiment(cfg, tmp_path / "resumed").metrics == reference.metrics


@pytest.mark.parametrize(("damage", "message"), [
    ("config.json", "config.json is not valid JSON"),
    ("checkpoint/state.pt", "state.pt cannot be read"),
    ("metrics.jsonl", "metrics.jsonl: line 1 is not JSON"),
])
def test_damaged_run_files_are_named_in_the_error(tmp_path, damage, message):
    cfg = tiny(**{"train.generator_steps": 8, "checkpoint_every": 2})

    with pytest.raises(Interrupt):
        run_experiment(cfg, tmp_path, on_report=stop_after_step_5)
    path = tmp_path / damage
    assert path.exists()
    path.write_bytes(b"garbage\n" + path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(ValueError, match=message) as info:
        run_experiment(cfg, tmp_path)
    assert str(tmp_path) in str(info.value)


def test_a_run_directory_that_is_a_file_or_under_one_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "run"):
        with pytest.raises(ValueError, match=f"{tmp_path / 'file'} is a file, not a directory"):
            run_experiment(tiny(), out)


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
    """A 16-d run: its projection picture is a real PNG, its final metrics are exactly the
    declared ones, and the mode statistics are those of its final samples."""
    cfg = with_overrides(get_preset("gmm16d-tiny"), {})
    result = run_experiment(cfg, tmp_path)
    assert result.status == "finished"

    picture = tmp_path / "samples.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 10_000
    with Image.open(picture) as image:
        image.verify()  # chunks and checksums
    with Image.open(picture) as image:
        assert image.format == "PNG" and min(image.size) >= 200
        low_high = image.convert("L").getextrema()
    assert low_high[1] - low_high[0] > 100  # a drawing, not a blank canvas

    declared = json.loads((tmp_path / "provenance.json").read_text())["metrics"]
    final_keys = {m["key"] for m in declared if m["stage"] == "final"}
    costs = {m["key"] for m in declared if m["role"] == "cost" and m["stage"] == "final"}
    assert costs == {"wall_time_s", "steps_per_s"} and costs <= final_keys
    spent = {m["key"] for m in declared if m["role"] == "cost" and m["stage"] == "curve"}
    assert spent == {"teacher_evaluations", "critic_evaluations"}
    final = json.loads((tmp_path / "final_metrics.json").read_text())
    assert set(final["metrics"]) == set(result.metrics) == final_keys - costs
    assert all(math.isfinite(final[key]) and final[key] > 0 for key in costs)

    metrics = result.metrics
    assert math.isfinite(metrics["fd_n512"]) and metrics["fd_n512"] > 0
    covered, off_mode = metrics["modes_covered_n512"], metrics["off_mode_n512"]
    teacher = teacher_for(cfg)
    assert covered == int(covered) and 0 <= covered <= len(teacher.weights) == 10
    assert 0 <= off_mode <= 1 and 0 <= metrics["mode_tv_n512"] <= 1
    # The same numbers again from the final EMA student (the last checkpoint) on the
    # evaluation latents: the FD and the mode statistics belong to the samples drawn.
    state = torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=True)
    assert state["distiller"]["generator_step"] == cfg.train.generator_steps
    distiller = Distiller(cfg, teacher)
    distiller.load_state_dict(state["distiller"])
    samples = distiller.sample(cfg.eval.n_final, cfg.eval.seed)
    assert teacher.build_evaluator(cfg).final(samples) == pytest.approx(metrics)
    stats = mode_stats(samples, teacher.means, teacher.stds, teacher.weights)
    assert covered == stats.covered
    assert off_mode == pytest.approx(stats.off_mode_fraction)
    assert metrics["mode_tv_n512"] == pytest.approx(stats.weight_tv)
    on_mode = int(stats.counts.sum())
    assert on_mode == round((1 - off_mode) * cfg.eval.n_final)
