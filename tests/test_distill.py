"""The Di-Bregman loop: the reverse-KL identity, determinism, divergence, the same-x_s rule."""

import math

import pytest
import torch

import dibregman.methods
from dibregman.config import with_overrides
from dibregman.distill import Distiller
from dibregman.losses import distribution_matching
from dibregman.presets import get_preset
from dibregman.results import Status
from dibregman.teachers import teacher_for


def distiller(steps: int = 4, **overrides) -> Distiller:
    cfg = with_overrides(get_preset("gmm2d-tiny"), overrides)
    d = Distiller(cfg, teacher_for(cfg))
    d.warmup()
    for _ in range(steps):
        d.step()
    return d


def same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                  b.state_dict().values(), strict=True))


def test_di_bregman_with_reverse_kl_equals_the_dmd_method_bit_for_bit():
    """Reverse KL's weight is exactly 1 through the whole weight pipeline (clipping, bins,
    batch-mean division), so Di-Bregman with it trains exactly as DMD's unit weights."""
    weighted = distiller(**{"generator.name": "reverse_kl"})
    dmd = distiller(**{"method": "dmd"})
    assert same_parameters(weighted.student, dmd.student)
    assert same_parameters(weighted.student_ema, dmd.student_ema)
    assert same_parameters(weighted.fake, dmd.fake)


def test_other_generators_change_the_update():
    pearson = distiller(**{"generator.name": "pearson"})
    dmd = distiller(**{"method": "dmd"})
    assert not same_parameters(pearson.student, dmd.student)


def test_deterministic_for_a_seed_and_different_across_seeds():
    assert same_parameters(distiller(seed=1).student, distiller(seed=1).student)
    assert not same_parameters(distiller(seed=1).student, distiller(seed=2).student)


def test_fourier_features_are_seeded_and_zero_features_give_the_plain_residual_mlp():
    """The frequencies come from the seed (same seed, same B; another seed, another B) and
    have the configured scale (entries of std scale / sqrt(d)); with 0 features the student is
    ``sd (z + MLP(z))``. The ratio network's features are seeded the same way."""
    ff = {"net.fourier_features": 256, "net.fourier_scale": 3.0}
    a, b = distiller(steps=0, seed=1, **ff), distiller(steps=0, seed=1, **ff)
    other = distiller(steps=0, seed=2, **ff)
    frequencies = a.student.features.frequencies
    assert frequencies.shape == (2, 256)
    assert torch.equal(frequencies, b.student.features.frequencies)
    assert not torch.equal(frequencies, other.student.features.frequencies)
    assert float(frequencies.std()) == pytest.approx(3.0 / math.sqrt(2), rel=0.1)
    ratio_features = a.ratio.network.net.features.frequencies
    assert ratio_features.shape == (2, a.cfg.net.ratio_fourier_features)
    assert torch.equal(ratio_features, b.ratio.network.net.features.frequencies)
    assert not torch.equal(ratio_features, other.ratio.network.net.features.frequencies)
    plain = distiller(steps=0, seed=1, **{"net.fourier_features": 0}).student
    z = torch.randn(5, 2)
    assert plain.features.frequencies.shape == (2, 0)
    torch.testing.assert_close(plain(z), plain.sigma_data * (z + plain.net(z)))


@pytest.mark.parametrize("regression_weight, fourier_features", [(0.0, 0), (1.0, 16)])
def test_state_dict_round_trip_continues_identically(regression_weight, fourier_features):
    overrides = {"train.regression_weight": regression_weight, "train.regression_pairs": 64,
                 "net.fourier_features": fourier_features}
    reference = distiller(steps=4, **overrides)
    half = distiller(steps=2, **overrides)
    resumed = Distiller(half.cfg, half.teacher)
    resumed.load_state_dict(half.state_dict())
    for _ in range(2):
        resumed.step()
    assert same_parameters(reference.student, resumed.student)
    assert same_parameters(reference.ratio, resumed.ratio)


def test_huge_learning_rate_ends_diverged_not_crashed():
    d = distiller(steps=0, **{"train.lr": 1e12, "train.max_nonfinite_steps": 3})
    for _ in range(200):
        d.step()
        if d.status[0] is Status.DIVERGED:
            break
    assert d.status[0] is Status.DIVERGED
    assert d.nonfinite_total[0] >= 3


def test_ratio_weight_read_at_the_same_noised_samples_as_score_difference():
    """The log-ratio the weights are read off is the ratio network's at the very ``x_s`` and
    ``sigma`` the teacher's score is evaluated at."""
    d = distiller(steps=0, **{"generator.name": "pearson"})
    seen = {}
    denoise, log_ratio, weights = d.teacher.denoise, d.ratio.log_ratio, d.ratio.weights

    def spy_denoise(x, sigma, labels=None):
        seen["denoise"] = (x.clone(), sigma.clone())
        return denoise(x, sigma, labels)

    def spy_log_ratio(x, sigma, labels=None):
        seen["log_ratio"] = (x.clone(), sigma.clone())
        seen["log_r"] = log_ratio(x, sigma, labels)
        return seen["log_r"]

    def spy_weights(generator, log_r, sigma, update=True):
        seen["weights"] = (log_r.clone(), sigma.clone())
        return weights(generator, log_r, sigma, update)

    d.teacher.denoise, d.ratio.log_ratio, d.ratio.weights = spy_denoise, spy_log_ratio, spy_weights
    d.student_step()
    assert torch.equal(seen["denoise"][0], seen["log_ratio"][0])
    assert torch.equal(seen["denoise"][1], seen["log_ratio"][1])
    assert torch.equal(seen["weights"][0], seen["log_r"])
    assert torch.equal(seen["denoise"][1], seen["weights"][1])


@pytest.mark.parametrize("name", ["reverse_kl", "pearson"])
def test_student_step_moves_samples_along_teacher_minus_fake(monkeypatch, name):
    """The descent direction ``-dL/dx_i`` at every student sample ``x_i = G(z_i)`` is
    ``D_teacher(x_s)_i - D_fake(x_s)_i`` at its own noised ``x_s`` (DMD), scaled by a positive
    per-sample weight, and the step moves the student's samples that way.

    ``distribution_matching`` is wrapped for one real ``Distiller.step()``: the wrapper records
    its inputs and ``dL/dx`` (a hook on ``x``), and evaluates both denoisers again, on its own,
    at the ``x_s`` the teacher was just queried at.
    """
    d = distiller(steps=0, **{"generator.name": name})
    assert d.cfg.train.gan_weight == 0 and d.pairs is None  # the loss is distribution matching
    original, denoise = dibregman.methods.distribution_matching, d.teacher.denoise
    queried, seen = [], {}

    def spy_denoise(x, sigma, labels=None):
        queried.append((x.detach().clone(), sigma.detach().clone()))
        return denoise(x, sigma, labels)

    def spy_student(module, args, output):
        if torch.is_grad_enabled():  # the student step's samples (critic samples are no-grad)
            seen["z"] = args[0].detach().clone()

    def wrapped(x, denoised_teacher, denoised_fake, weight):
        x_s, sigma = queried[-1]  # the student step's teacher query, just before this call
        with torch.no_grad():
            seen.update(x=x.detach().clone(), weight=weight,
                        teacher_arg=denoised_teacher.clone(), fake_arg=denoised_fake.clone(),
                        teacher=denoise(x_s, sigma), fake=d.fake(x_s, sigma).float())
        x.register_hook(lambda grad: seen.__setitem__("grad", grad.detach().clone()))
        return original(x, denoised_teacher, denoised_fake, weight)

    monkeypatch.setattr(d.teacher, "denoise", spy_denoise)
    monkeypatch.setattr(dibregman.methods, "distribution_matching", wrapped)
    handle = d.student.register_forward_hook(spy_student)
    before = d.sample(256, seed=11)
    d.step()
    handle.remove()

    # The loss got the teacher's and the fake score's denoisings at x_s, in that order.
    torch.testing.assert_close(seen["teacher_arg"], seen["teacher"])
    torch.testing.assert_close(seen["fake_arg"], seen["fake"])
    weight = seen["weight"]
    assert weight is not None and bool((weight > 0).all())
    if name == "pearson":  # w = r: a weight that differs between samples
        assert not torch.all(weight == weight[0])

    descent, target = -seen["grad"], seen["teacher"] - seen["fake"]
    assert descent.shape == target.shape == (d.cfg.train.batch_size, 2)
    cosine = torch.nn.functional.cosine_similarity(descent, target, dim=1)
    assert bool((cosine > 0.99).all()), f"min cosine {float(cosine.min()):.4f}"

    assert not torch.equal(d.sample(256, seed=11), before)
    # To first order the batch moved along its descent directions:
    # sum_i <G'(z_i) - G(z_i), -dL/dx_i> = -<d theta, grad_theta L> > 0 for an Adam step.
    with torch.no_grad():
        moved = d.student(seen["z"]) - seen["x"]
    assert float((moved * descent).sum()) > 0


# How much a 120-step run must lower FD: reverse KL (w = 1) several-fold; generators that
# reweight by a ratio estimate that sees the initial blob's gaps move it more slowly (forward KL
# downweights the over-populated gaps, w = 1/r), but they must still move it.
FD_DROP = {"reverse_kl": 3.0, "pearson": 1.5, "forward_kl": 1.2, "jensen_shannon": 1.5}


@pytest.mark.parametrize("name", list(FD_DROP))
def test_distillation_lowers_frechet_distance(name):
    """A short real run on gmm2d: the EMA student's FD to the teacher falls by ``FD_DROP``.

    (Not ``log_squared``: its weight is 0 wherever the student over-populates by ``r >= e``,
    so with a ratio estimate that sees the initial blob's gaps it leaves them unmoved for
    longer than 120 steps; ``docs/ratio.md``.)"""
    cfg = with_overrides(get_preset("gmm2d"), {
        "generator.name": name, "train.generator_steps": 120, "train.fake_warmup_steps": 100,
        "train.batch_size": 128, "net.hidden": 64, "train.ema_decay": 0.9,
    })
    d = Distiller(cfg, teacher_for(cfg))
    d.warmup()
    curve = d.teacher.build_evaluator(cfg).curve
    before = curve(d.sample(2000, 7))["fd_n2000"]
    for _ in range(cfg.train.generator_steps):
        d.step()
    after = curve(d.sample(2000, 7))["fd_n2000"]
    assert after < before / FD_DROP[name], f"{name}: FD {before:.3f} -> {after:.3f}"


def test_fake_score_and_ratio_network_learn_at_their_own_rates():
    d = distiller(steps=0, **{"train.lr": 1e-3, "train.fake_lr_scale": 4.0,
                              "train.ratio_lr_scale": 2.0})
    assert [g["lr"] for g in d.opt_fake.param_groups] == [4e-3]
    assert [g["lr"] for g in d.opt_student.param_groups] == [1e-3]
    assert [g["lr"] for g in d.opt_ratio.param_groups] == [2e-3]


def test_student_ema_is_the_mean_of_the_iterates_until_its_decay_cap():
    d = distiller(steps=0, **{"train.ema_decay": 0.9})
    iterates = []
    for _ in range(4):
        d.step()
        iterates.append([p.clone() for p in d.student.parameters()])
    for i, averaged in enumerate(d.student_ema.parameters()):
        mean = torch.stack([it[i] for it in iterates]).mean(dim=0)
        torch.testing.assert_close(averaged, mean)


def test_regression_pairs_are_the_teachers_ode_images_of_their_own_latents():
    d = distiller(steps=0, **{"train.regression_weight": 1.0, "train.regression_pairs": 64})
    latents, labels, targets = d.pairs
    assert latents.shape == targets.shape == (64, 2) and labels is None
    torch.testing.assert_close(targets, d.teacher.sample_from(latents))
    evaluation = torch.randn(64, 2, generator=torch.Generator().manual_seed(d.cfg.eval.seed))
    assert not torch.equal(latents, evaluation)
    assert distiller(steps=0).pairs is None


def test_regression_term_pulls_the_student_onto_the_teachers_ode_map():
    """DMD's regression term: a heavy weight fits ``G(z_i)`` to the ODE images ``y_i``; without
    it distribution matching alone leaves the student far from that pairing."""
    reference = distiller(steps=0, **{"train.regression_weight": 1.0,
                                      "train.regression_pairs": 256})
    latents, _, targets = reference.pairs

    def error(weight):
        d = distiller(steps=100, **{"train.regression_weight": weight, "train.lr": 3e-3,
                                    "train.regression_pairs": 256})
        with torch.no_grad():
            return float(((d.student(latents) - targets) ** 2).sum(1).mean())

    assert error(1000.0) < error(0.0) / 2


def test_distribution_matching_step_is_finite_where_the_teacher_denoises_to_the_sample():
    """A student sample equal to its teacher denoising has normaliser mean|x - D_teacher| = 0:
    the epsilon keeps the step finite (zero where the two denoisers agree, large but finite
    where they do not)."""
    x = torch.zeros(2, 3, requires_grad=True)
    denoised_teacher = torch.zeros(2, 3)
    denoised_fake = torch.tensor([[0.0, 0.0, 0.0], [1e-6, 0.0, 0.0]])
    loss, step = distribution_matching(x, denoised_teacher, denoised_fake, None)
    assert torch.isfinite(step).all() and torch.isfinite(loss).all()
    assert torch.equal(step[0], torch.zeros(3))
    assert step[1, 0] == pytest.approx(1e-6 / 1e-8)


def test_another_seed_stream_shares_no_randomness_with_the_seed():
    """seed_stream 1 of seed 0 starts from other generators than seed 0 (not the low 32 bits of
    an offset seed, which torch's CPU generator would map back onto stream 0) and than seed 1:
    other initial weights, other latents."""
    plain = distiller(steps=0, seed=0)
    stream = distiller(steps=0, seed=0, **{"seed_stream": 1})
    other_seed = distiller(steps=0, seed=1)
    assert not same_parameters(plain.student, stream.student)
    assert not same_parameters(other_seed.student, stream.student)
    assert not torch.equal(plain.critic_batch().latents, stream.critic_batch().latents)
    assert same_parameters(stream.student, distiller(steps=0, seed=0, **{"seed_stream": 1}).student)


def test_evaluation_counts_follow_the_schedule():
    """Per generator step: B teacher evaluations (its score at the student samples); per
    critic step B fake-score and 2B ratio evaluations, per student step B of each; the warm-up's
    critic steps count from step 0; exact mixture samples cost the teacher nothing."""
    d = distiller(steps=0)
    train = d.cfg.train
    b, k = train.batch_size, train.critic_steps_per_generator_step
    for step in (0, 5):
        counts = d.evaluation_counts(step)
        critic_steps = train.fake_warmup_steps + step * k
        assert counts["teacher_evaluations"] == b * step
        assert counts["critic_evaluations"] == b * (3 * critic_steps + 2 * step)
