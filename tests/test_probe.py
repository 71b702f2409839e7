"""`bench sweep --dry-run --probe-steps N`: a timed probe of the first trial and the sweep's
estimated device-hours."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from bench.cli import app
from dibregman.config import with_overrides
from dibregman.presets import get_preset
from dibregman.probe import Probe, probe


def test_run_hours_are_seconds_per_step_times_steps():
    cfg = with_overrides(get_preset("gmm2d"), {"train.generator_steps": 7200})
    assert Probe(0.5, 3, "cpu").run_hours(cfg) == pytest.approx(1.0)


def test_probe_times_steps_on_the_local_device():
    measured = probe(get_preset("gmm2d-tiny"), steps=2)
    assert measured.device == "cpu" and measured.steps == 2
    assert 0 < measured.seconds_per_step < 60


def test_dry_run_prints_the_estimate_for_every_run(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "sweeps/smoke.yaml", "--dry-run",
                                      "--probe-steps", "2"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    match = re.search(r"probe on cpu: ([\d.e-]+) s per generator step \(2 timed\); 6 steps per "
                      r"run x 3 runs = about ([\d.e-]+) device-hours", text)
    assert match, text
    per_step, hours = map(float, match.groups())
    assert hours == pytest.approx(per_step * 6 * 3 / 3600, rel=0.01)


def test_a_probe_that_cannot_build_its_teacher_is_a_clear_exit_2(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: p\npreset: digits-tiny\ngrid:\n  generator: [reverse_kl]\n"
                    f"seeds: [0]\nmetric: fd_cls_n256\nmode: min\n"
                    f"set: {{teacher: pretrained, image_teacher.path: {tmp_path / 'none'}}}\n")
    result = CliRunner().invoke(app, ["sweep", str(spec), "--dry-run", "--probe-steps", "1"])
    assert result.exit_code == 2
    assert "probe:" in result.output and "holds no imported teacher" in result.output
