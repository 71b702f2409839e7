"""`bench run` and `bench list`: results on success; one line, exit 2 and no files on bad input."""

import json

import pytest
from typer.testing import CliRunner

from bench.cli import app
from dibregman.bregman import generator_names

runner = CliRunner()


def test_list_shows_every_registry():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    for name in [*generator_names(), "classifier", "ulsif", "gmm2d-tiny", "train.lr", "mnist",
                 "fd_cls_nN"]:
        assert name in result.output


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
    (["--preset", "gmm9d"], "unknown preset 'gmm9d'; valid: cifar10, cifar10-tiny"),
    (["--generator", "kl"], "unknown Bregman generator 'kl'; valid: alpha"),
    (["--set", "train.lrr=1"], "unknown config key 'train.lrr'; valid: preset"),
    (["--set", "train.lr=fast"], "bad value 'fast' for train.lr: expected a number"),
    (["--set", "train.lr"], "expected KEY=VALUE"),
    (["--generator", "power", "--alpha", "-1"], "generator.alpha"),
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
