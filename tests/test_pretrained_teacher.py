"""Distilling an imported network (teacher ``pretrained``): the teacher is the imported
denoiser over the dataset's images, within the network's noise range; a run distils it; bad
imports are clear errors."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from bench.cli import app
from dibregman.config import with_overrides
from dibregman.presets import get_preset
from dibregman.pretrained.edm import build
from dibregman.pretrained.store import save_imported
from dibregman.run import run_experiment
from dibregman.teachers import teacher_for

TINY_SONG_UNET = {"model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1,
                  "attn_resolutions": [4], "dropout": 0.0}


def tiny_import(directory, class_name="VEPrecond", label_dim=0, resolution=8):
    """A tiny randomly initialised EDM network for 1-channel images, written as an import."""
    record = {"format": "edm", "class_name": class_name,
              "init_kwargs": {"img_resolution": resolution, "img_channels": 1,
                              "label_dim": label_dim, **TINY_SONG_UNET}}
    torch.manual_seed(0)
    network = build(record)
    record.update(img_resolution=resolution, img_channels=1, label_dim=label_dim,
                  sigma_min=network.sigma_min, sigma_max=network.sigma_max)
    save_imported(directory, network, record)
    return network


def pretrained_config(path, **overrides):
    return with_overrides(get_preset("digits-tiny"), {
        "teacher": "pretrained", "image_teacher.path": str(path), **overrides})


def test_the_teacher_is_the_imported_denoiser_within_its_noise_range(tmp_path):
    network = tiny_import(tmp_path / "ve")  # VE: sigma in [0.02, 100]
    teacher = teacher_for(pretrained_config(tmp_path / "ve"))
    assert teacher.shape == (1, 8, 8)
    assert (teacher.sigma_min, teacher.sigma_max) == (0.02, 80.0)  # 0.002 ... 80 clipped
    x, sigma = torch.randn(4, 1, 8, 8), torch.tensor([0.05, 0.5, 5.0, 50.0])
    with torch.no_grad():
        torch.testing.assert_close(teacher.denoise(x, sigma), network(x, sigma))


def test_a_run_distils_an_imported_teacher(tmp_path):
    tiny_import(tmp_path / "vp", class_name="VPPrecond")
    cfg = pretrained_config(tmp_path / "vp", **{"train.generator_steps": 4})
    result = run_experiment(cfg, tmp_path / "run")
    assert result.status == "finished"
    assert all(math.isfinite(v) for v in result.metrics.values()), result.metrics
    assert (tmp_path / "run" / "checkpoint" / "state.pt").exists()  # for a later `bench fid`


def test_a_class_conditional_import_is_refused(tmp_path):
    tiny_import(tmp_path / "cond", label_dim=10)
    with pytest.raises(ValueError, match="class-conditional network"):
        teacher_for(pretrained_config(tmp_path / "cond"))


def test_an_import_for_other_images_is_refused(tmp_path):
    tiny_import(tmp_path / "big", resolution=16)
    with pytest.raises(ValueError, match="models 1x16x16 images, but dataset 'digits' has 1x8x8"):
        teacher_for(pretrained_config(tmp_path / "big"))


def test_bench_run_without_an_import_is_a_clear_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["run", "--preset", "digits-tiny", "--set",
                                      "teacher=pretrained", "--set",
                                      f"image_teacher.path={tmp_path}", "--out",
                                      str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "holds no imported teacher" in result.output


def test_the_paper_recipe_preset_and_sweep():
    """`cifar10-edm` is f-distill's schedule on an imported teacher; its sweep holds 4 arms x 3
    seeds and ranks by the 50k-sample FID."""
    from dibregman.validation import validate

    cfg = get_preset("cifar10-edm")
    validate(cfg)
    assert cfg.teacher == "pretrained" and cfg.image_teacher.dataset == "cifar10"
    assert (cfg.train.batch_size, cfg.train.generator_steps, cfg.train.lr,
            cfg.train.critic_steps_per_generator_step, cfg.train.gan_weight,
            cfg.ratio.noise_bins) == (2048, 100_000, 1e-4, 5, 1e-3, 10)
    assert (cfg.ratio.clip_min, cfg.ratio.clip_max) == (0.05, 10.0)
    result = CliRunner().invoke(app, ["sweep", "sweeps/cifar10-edm.yaml", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "12 runs in 12 trials" in result.output
