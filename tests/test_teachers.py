"""The analytic mixture teacher: exact score and denoiser of every noised marginal (on the
two named mixtures of the presets, gmm2d and gmm16d)."""

import math

import pytest
import torch

from dibregman.config import Config
from dibregman.presets import get_preset
from dibregman.teachers import GaussianMixtureTeacher, teacher_for, teacher_names


def build_teacher(preset: str):
    """The teacher of a preset (gmm2d, gmm16d: the ``mixture`` teacher of their section)."""
    return teacher_for(get_preset(preset))


@pytest.fixture(params=["gmm2d", "gmm16d"])
def teacher(request) -> GaussianMixtureTeacher:
    return build_teacher(request.param)


@pytest.mark.parametrize("sigma", [0.01, 0.3, 2.0, 15.0])
def test_score_is_gradient_of_noised_log_density(teacher, sigma):
    x = teacher.sample(64, torch.Generator().manual_seed(0)).double()
    x = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(1),
                                dtype=torch.float64)
    x.requires_grad_(True)
    (autograd_score,) = torch.autograd.grad(teacher.log_prob(x, sigma).sum(), x)
    torch.testing.assert_close(teacher.score(x.detach(), sigma), autograd_score,
                               rtol=1e-6, atol=1e-8)


def test_denoiser_is_tweedie_posterior_mean(teacher):
    """Tweedie: E[x0 | x_sigma] = x + sigma^2 grad log p_sigma; also a Monte Carlo check."""
    gen = torch.Generator().manual_seed(3)
    sigma = 0.5
    x0 = teacher.sample(200_000, gen).double()
    noised = x0 + sigma * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    # Regressing x0 on x_sigma: the posterior mean minimises E||D(x_sigma) - x0||^2, so the exact
    # denoiser must beat a slightly perturbed one, and its residual must be uncorrelated with
    # any function of x_sigma (here: x_sigma itself).
    residual = x0 - teacher.denoise(noised, sigma)
    assert residual.mean(0).abs().max() < 0.01
    cross = (residual[:, :, None] * noised[:, None, :]).mean(0)
    assert cross.abs().max() < 0.02
    x = noised[:16].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(teacher.log_prob(x, sigma).sum(), x)
    torch.testing.assert_close(teacher.denoise(x.detach(), sigma), x.detach() + sigma**2 * grad)


def test_per_sample_sigma_matches_scalar(teacher):
    x = teacher.sample(8, torch.Generator().manual_seed(0))
    sigmas = torch.tensor([0.01, 0.1, 1.0, 10.0] * 2)
    rows = torch.stack([teacher.denoise(x[i : i + 1], float(s))[0] for i, s in enumerate(sigmas)])
    torch.testing.assert_close(teacher.denoise(x, sigmas), rows)


def test_denoiser_limits(teacher):
    """sigma -> 0 returns the input; sigma -> inf returns the mixture mean."""
    x = teacher.sample(32, torch.Generator().manual_seed(0)).double()
    torch.testing.assert_close(teacher.denoise(x, 1e-6), x, atol=1e-6, rtol=0)
    mean = (teacher.weights[:, None] * teacher.means).sum(0)
    far = teacher.denoise(x, 1e5)
    torch.testing.assert_close(far, mean.expand_as(far), atol=1e-3, rtol=0)


def test_sampling_matches_weights_and_sigma_data(teacher):
    x = teacher.sample(200_000, torch.Generator().manual_seed(5)).double()
    nearest = torch.cdist(x, teacher.means).argmin(1)
    share = torch.bincount(nearest, minlength=len(teacher.weights)) / len(x)
    assert (share - teacher.weights).abs().max() < 0.01
    assert math.isclose(float(x.std(0).pow(2).mean().sqrt()), teacher.sigma_data, rel_tol=0.02)


def test_gmm2d_has_a_small_mode():
    teacher = build_teacher("gmm2d")
    assert teacher.shape == (2,) and len(teacher.weights) == 8
    assert float(teacher.weights.min()) <= 0.03


def test_gmm16d_shape():
    teacher = build_teacher("gmm16d")
    assert teacher.shape == (16,) and len(teacher.weights) == 10


def test_unknown_teacher_lists_valid_names():
    with pytest.raises(ValueError, match="valid: " + ", ".join(teacher_names())):
        teacher_for(Config(teacher="cifar11"))


def test_bad_weights_rejected():
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixtureTeacher(torch.zeros(2, 2), torch.ones(2), torch.tensor([0.5, 0.6]))


def test_ode_map_carries_standard_normal_latents_onto_the_mixture():
    """The probability-flow ODE pushes N(0, I) onto the teacher: component shares, scale and the
    spread within each component (E||x - mu_k||^2 = d s_k^2) all match."""
    teacher = build_teacher("gmm2d")
    latents = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(0))
    x = teacher.sample_from(latents).double()
    nearest = torch.cdist(x, teacher.means).argmin(1)
    share = torch.bincount(nearest, minlength=len(teacher.weights)) / len(x)
    assert (share - teacher.weights).abs().max() < 0.02
    assert math.isclose(float(x.std(0).pow(2).mean().sqrt()), teacher.sigma_data, rel_tol=0.03)
    spread = ((x - teacher.means[nearest]) / teacher.stds[nearest, None]).pow(2).sum(1).mean()
    assert math.isclose(float(spread), 2.0, rel_tol=0.05)
    assert torch.equal(teacher.sample_from(latents[:5]).double(), x[:5])


def test_a_broken_or_clashing_plugin_is_skipped_with_a_warning(monkeypatch):
    """One bad entry point must not hide the registry: it is named in a warning."""
    from importlib.metadata import EntryPoint

    from dibregman.teachers import registry

    points = [EntryPoint("broken", "no_such_module_xyz:Teacher", registry.ENTRY_POINT_GROUP),
              EntryPoint("mixture", "dibregman.teachers:GaussianMixtureTeacher",
                         registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "entry_points", lambda group: points)
    with pytest.warns(UserWarning) as caught:
        names = teacher_names()
    messages = " ".join(str(w.message) for w in caught)
    assert "broken = no_such_module_xyz:Teacher skipped: ModuleNotFoundError" in messages
    assert "teacher 'mixture' is registered already (built-in)" in messages
    assert "broken" not in names and registry.teacher_entry("mixture").source == "built-in"
