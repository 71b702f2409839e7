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
from dibregman.evaluate import declared_metrics
from dibregman.presets import get_preset
from dibregman.pretrained.edm import build
from dibregman.pretrained.store import save_imported
from dibregman.results import Role, Stage
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


def test_a_class_conditional_import_distils_with_the_students_labels(tmp_path):
    network = tiny_import(tmp_path / "cond", class_name="VPPrecond", label_dim=10)
    cfg = pretrained_config(tmp_path / "cond", **{"image_teacher.class_conditional": True,
                                                 "train.generator_steps": 2})
    teacher = teacher_for(cfg)
    assert teacher.num_classes == 10
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.5, 5.0])
    labels = torch.eye(10)[[1, 7]]
    with torch.no_grad():
        torch.testing.assert_close(teacher.denoise(x, sigma, labels), network(x, sigma, labels))
    result = run_experiment(cfg, tmp_path / "run")
    assert result.status == "finished"
    declared = {spec.key for spec in declared_metrics(cfg)
                if spec.stage is Stage.FINAL and spec.role is not Role.COST}
    assert {"fd_cls_per_class_n512", "class_accuracy_n512"} <= declared <= set(result.metrics)
    assert 0 <= result.metrics["class_accuracy_n512"] <= 1
    assert math.isfinite(result.metrics["fd_cls_per_class_n512"])


def test_conditioning_that_does_not_match_the_network_is_refused(tmp_path):
    tiny_import(tmp_path / "cond", label_dim=10)
    with pytest.raises(ValueError, match="class-conditional network .10 classes.: set "
                                         "image_teacher.class_conditional=true"):
        teacher_for(pretrained_config(tmp_path / "cond"))
    tiny_import(tmp_path / "uncond")
    with pytest.raises(ValueError, match="is an unconditional network"):
        teacher_for(pretrained_config(tmp_path / "uncond",
                                      **{"image_teacher.class_conditional": True}))
    tiny_import(tmp_path / "five", label_dim=5)
    with pytest.raises(ValueError, match="has 5 classes, but dataset 'digits' has 10"):
        teacher_for(pretrained_config(tmp_path / "five",
                                      **{"image_teacher.class_conditional": True}))


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


@pytest.mark.parametrize("name, checkpoint, conditional", [
    ("cifar10-edm", "edm-cifar10-32x32-uncond-vp", False),
    ("cifar10-paper", "edm-cifar10-32x32-cond-vp", True)])
def test_the_paper_recipe_presets_and_sweeps(name, checkpoint, conditional):
    """`cifar10-paper` (the paper's class-conditional teacher) and `cifar10-edm` (the
    unconditional one) are f-distill's schedule on an imported teacher; each sweep holds 4 arms
    x 3 seeds and ranks by the 50k-sample FID."""
    from dibregman.validation import validate

    cfg = get_preset(name)
    validate(cfg)
    assert cfg.teacher == "pretrained" and cfg.image_teacher.dataset == "cifar10"
    assert cfg.image_teacher.path == f"teachers/{checkpoint}"
    assert cfg.image_teacher.class_conditional is conditional
    assert (cfg.train.batch_size, cfg.train.generator_steps, cfg.train.lr,
            cfg.train.critic_steps_per_generator_step, cfg.train.gan_weight,
            cfg.ratio.noise_bins) == (2048, 100_000, 1e-4, 5, 1e-3, 10)
    assert (cfg.ratio.clip_min, cfg.ratio.clip_max) == (0.05, 10.0)
    keys = {spec.key for spec in declared_metrics(cfg)}
    assert ("fd_cls_per_class_n50000" in keys) is conditional
    result = CliRunner().invoke(app, ["sweep", f"sweeps/{name}.yaml", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "12 runs in 12 trials" in " ".join(result.output.split())  # however rich wraps
