"""The papers' FID protocol apart from training (``dibregman.fid``, ``bench fid``): streaming
moments, min / mean over sample seeds, resuming an interrupted evaluation, clear errors.

The protocol's feature network is clean-fid's Inception (tested in test_image_metrics.py); here
the features are the raw pixels, so a whole evaluation takes seconds on a CPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bench.cli import app
from dibregman.config import with_overrides
from dibregman.fid import RunningMoments, paper_fid
from dibregman.metrics import frechet_distance, gaussian_moments
from dibregman.presets import get_preset
from dibregman.run import run_experiment

PROJECTION = torch.randn(64, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def pixels(images: torch.Tensor, device: str) -> torch.Tensor:
    """``(N, 8)`` float64 features: a fixed random projection of the 8x8 pixels (fewer
    dimensions than samples; some digit pixels are constant, so the pixels themselves are not
    full rank)."""
    return images.flatten(1).double() @ PROJECTION


def copy_run(run_dir, to):
    """A copy of a run's config and checkpoint (a run with no FID evaluated yet)."""
    (to / "checkpoint").mkdir(parents=True)
    (to / "config.json").write_bytes((run_dir / "config.json").read_bytes())
    for f in (run_dir / "checkpoint").iterdir():
        (to / "checkpoint" / f.name).write_bytes(f.read_bytes())
    return to


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fid") / "run"
    cfg = with_overrides(get_preset("digits-tiny"), {"train.generator_steps": 4})
    run_experiment(cfg, run_dir)
    return run_dir


def test_running_moments_equal_the_moments_of_all_chunks():
    x = torch.randn(103, 5, dtype=torch.float64) * torch.arange(1, 6) + 3
    moments = RunningMoments(5)
    for chunk in x.split(17):
        moments.add(chunk)
    mean, cov = moments.moments()
    ref_mean, ref_cov = gaussian_moments(x)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-10, atol=1e-12)


def test_per_seed_fids_their_min_and_mean(digits_run):
    result = paper_fid(digits_run, n=64, seeds=(0, 1), batch_size=32, features=pixels)
    fids = [result["fid_seed0"], result["fid_seed1"]]
    assert fids[0] != fids[1] and all(f > 0 for f in fids)
    assert result["fid_min"] == min(fids) and result["fid_mean"] == pytest.approx(np.mean(fids))
    assert json.loads((digits_run / "fid" / "fid.json").read_text()) == result


def test_fid_is_the_frechet_distance_of_the_students_samples(digits_run, tmp_path):
    """Seed 5's FID equals the FD between the pixels of the EMA student's samples from seed
    5's latent stream and the pixels of the training images."""
    from dibregman.fid import _load_student

    run_copy = copy_run(digits_run, tmp_path / "run")
    result = paper_fid(run_copy, n=40, seeds=(5,), batch_size=16, features=pixels)
    student, teacher = _load_student(run_copy, "cpu")
    rng = torch.Generator().manual_seed(5)
    latents = torch.cat([torch.randn(size, *teacher.shape, generator=rng) for size in (16, 16, 8)])
    with torch.no_grad():
        samples = student(latents).clamp(-1, 1)
    expected = frechet_distance(*gaussian_moments(pixels(samples, "cpu")),
                                *gaussian_moments(pixels(teacher.data.images, "cpu")))
    assert result["fid_seed5"] == pytest.approx(expected, rel=1e-6)


def test_an_interrupted_evaluation_resumes_to_the_same_result(digits_run, tmp_path):
    whole = paper_fid(copy_run(digits_run, tmp_path / "whole"), n=48, seeds=(3,), batch_size=16,
                      features=pixels)
    run_copy = copy_run(digits_run, tmp_path / "run")

    calls = []

    def stop_after_two_chunks(seed, done, n):
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        paper_fid(run_copy, n=48, seeds=(3,), batch_size=16, features=pixels,
                  on_chunk=stop_after_two_chunks)
    saved = torch.load(run_copy / "fid" / "seed3.pt", weights_only=True)
    assert saved["count"] == 32
    resumed_chunks = []
    resumed = paper_fid(run_copy, n=48, seeds=(3,), batch_size=16, features=pixels,
                        on_chunk=lambda s, done, n: resumed_chunks.append(done))
    assert resumed_chunks == [48]  # only the third chunk was computed again
    assert resumed["fid_seed3"] == pytest.approx(whole["fid_seed3"], rel=1e-9)
    assert not (run_copy / "fid" / "seed3.pt").exists()


def test_a_changed_sample_count_is_refused(digits_run, tmp_path):
    run_copy = copy_run(digits_run, tmp_path / "run")
    paper_fid(run_copy, n=40, seeds=(0,), batch_size=40, features=pixels)
    with pytest.raises(ValueError, match="n=40, not 32"):
        paper_fid(run_copy, n=32, seeds=(0,), batch_size=32, features=pixels)


def test_bench_fid_on_a_mixture_run_is_a_clear_exit_2(tmp_path):
    cfg = with_overrides(get_preset("gmm2d-tiny"), {"train.generator_steps": 2})
    run_experiment(cfg, tmp_path / "run")
    result = CliRunner().invoke(app, ["fid", str(tmp_path / "run"), "--n", "8"])
    assert result.exit_code == 2
    assert "FID needs an image teacher" in result.output
    assert not (tmp_path / "run" / "fid").exists()


def test_bench_fid_on_a_folder_without_a_run_is_a_clear_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["fid", str(tmp_path)])
    assert result.exit_code == 2 and "is not a run directory" in result.output
