"""`bench run` and `bench list`: results on success; one line, exit 2 and no files on bad input."""

import json

import pytest
from typer.testing import CliRunner

from bench.cli import LiveProgress, app
from dibregman.bregman import generator_names
from dibregman.evaluate import curve_metrics
from dibregman.presets import get_preset

runner = CliRunner()


def test_list_shows_every_registry():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    for name in [*generator_names(), "classifier", "ulsif", "gmm2d-tiny", "train.lr", "mnist",
                 "gmm16d", "MixtureEvaluator", "ImageEvaluator",
                 "fd_cls_n10000", "precision_k3_n5000", "headline", "higher"]:
        assert name in result.output
    assert "pearson has w = r and neyman w = 1/r²" in " ".join(result.output.split())


def test_live_line_shows_the_declared_curve_metrics_of_image_runs_too():
    """The live progress line reads the curve declarations: fd_cls for an image preset."""
    for preset, key, name in [("digits-tiny", "fd_cls_n256", "fd_cls"),
                              ("gmm2d-tiny", "nll_n256", "nll")]:
        cfg = get_preset(preset)
        live = LiveProgress(cfg.train.generator_steps, curve_metrics(cfg))
        live({"step": 3, key: 0.125, "loss_dm": 2.0}, None)
        status = live.progress.tasks[0].fields["status"]
        assert f"{name} 0.125" in status and "dm 2" in status


def test_run_tiny_with_overrides(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--preset", "gmm2d-tiny", "--generator", "alpha",
                                 "--alpha", "0.25", "--seed", "3", "--set", "train.lr=2e-3",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["generator"] == {"name": "alpha", "alpha": 0.25}
    assert cfg["seed"] == 3 and cfg["train"]["lr"] == 2e-3
    assert "fd_n512" in result.output and "finished" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--preset", "gmm9d"],
     "unknown preset 'gmm9d'; valid: cifar10, cifar10-edm, cifar10-paper, cifar10-tiny"),
    (["--generator", "kl"], "unknown Bregman generator 'kl'; valid: alpha"),
    (["--set", "train.lrr=1"], "unknown config key 'train.lrr'; valid: preset"),
    (["--set", "train.lr=fast"], "bad value 'fast' for train.lr: expected a number"),
    (["--set", "train.lr"], "expected KEY=VALUE"),
    (["--generator", "power", "--alpha", "-1"], "generator.alpha"),
    (["--set", "train.sigma_init=2.5"], "train.sigma_init=2.5 does not apply to teacher 'mixture'"),
    (["--set", "image_teacher.channels=16"], "image_teacher.channels=16 does not apply"),
    (["--set", "train.lr=inf"], "train.lr must be a finite number (not inf or nan)"),
    (["--set", "train.sigma_max=inf"], "train.sigma_max must be a finite number"),
    (["--set", "train.lr=1e300"], "train.lr must be > 0 and <= 3.4e+38 (fp32)"),
    (["--set", "train.rho=0"], "train.rho must be > 0"),
    (["--set", "train.grad_clip=0"], "train.grad_clip must be > 0"),
    (["--set", "train.betas=2,2"], "train.betas must both be in [0, 1)"),
    (["--set", "train.weight_decay=-1"], "train.weight_decay must be >= 0"),
    (["--set", "train.sigma_grid_size=1"], "train.sigma_grid_size must be >= 2"),
    (["--seed", str(2**32)], "seed must be in [0, 2^32)"),
    (["--set", "num_threads=100000"], "num_threads must be in [0, "),
    (["--set", "net.fourier_features=-1"], "net.fourier_features must be >= 0"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "never"
    result = runner.invoke(app, ["run", "--preset", "gmm2d-tiny", *args, "--out", str(out)])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not out.exists()


def test_existing_run_with_other_config_exits_2(tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, ["run", "--preset", "gmm2d-tiny", "--out", str(out)]).exit_code == 0
    result = runner.invoke(app, ["run", "--preset", "gmm2d-tiny", "--seed", "9", "--out",
                                 str(out)])
    assert result.exit_code == 2 and "different config" in result.output


def test_bench_teacher_without_a_subcommand_still_trains_and_checks_its_preset(tmp_path):
    """`bench teacher` is a group (`import edm|diffusers`); called alone it is the trainer."""
    refused = runner.invoke(app, ["teacher", "--preset", "gmm2d", "--out", str(tmp_path / "t")])
    assert refused.exit_code == 2 and "preset 'gmm2d' has a vector teacher" in refused.output
    trained = runner.invoke(app, ["teacher", "--preset", "digits-tiny", "--out",
                                  str(tmp_path / "t")])
    assert trained.exit_code == 0, trained.output
    assert (tmp_path / "t" / "teacher.pt").exists()


def test_run_dry_run_prints_the_resolved_keys_and_writes_nothing(tmp_path, monkeypatch):
    """`bench run --dry-run` names the keys that differ from the preset and the run directory,
    exits 0 and writes nothing; a bad value is still exit 2."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", "--preset", "gmm2d-tiny", "--generator", "pearson",
                                      "--set", "train.lr=2e-4", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "generator.name" in result.output and "pearson" in result.output
    assert "train.lr" in result.output and "0.0002" in result.output
    assert "runs/gmm2d-tiny-pearson-s0 (nothing written)" in result.output
    assert list(tmp_path.iterdir()) == []
    bad = CliRunner().invoke(app, ["run", "--preset", "gmm2d-tiny", "--set", "train.lr=-1",
                                   "--dry-run"])
    assert bad.exit_code == 2 and list(tmp_path.iterdir()) == []
