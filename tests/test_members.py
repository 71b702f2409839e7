"""Seed batches: member k of a batch trains as run k alone; members never mix."""

import json
import math
import time

import pytest
import torch
from torch import nn

from dibregman.config import with_overrides
from dibregman.distill import Distiller, apply_update
from dibregman.members import Members, member_state_dict
from dibregman.networks import MLPNet, init_parameters
from dibregman.presets import get_preset
from dibregman.results import Status
from dibregman.run import CHECKPOINT_DIR, FINAL_FILE, METRICS_FILE, run_experiment, run_seed_batch
from dibregman.teachers import teacher_for

TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}  # a batched product sums in another order


def tiny(**overrides):
    return with_overrides(get_preset("gmm2d-tiny"), {"net.fourier_features": 8, **overrides})


def trained(cfg, seeds, steps):
    d = Distiller(cfg, teacher_for(cfg), seeds)
    d.warmup()
    for _ in range(steps):
        d.step()
    return d


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], **TOLERANCE)


def test_members_forward_is_each_module_on_its_own_rows():
    rng = torch.Generator().manual_seed(0)
    modules = [MLPNet(2, 2, 16, 2) for _ in range(3)]
    for module in modules:
        init_parameters(module, rng)
    members = Members(modules)
    x, c = torch.randn(3 * 5, 2, generator=rng), torch.randn(3 * 5, generator=rng)
    out = members(x, c)
    for k, module in enumerate(modules):
        torch.testing.assert_close(out[5 * k:5 * (k + 1)], module(x[5 * k:5 * (k + 1)],
                                                                  c[5 * k:5 * (k + 1)]))
        assert_same_state(member_state_dict(members, k), module.state_dict())


@pytest.mark.parametrize("overrides", [{}, {"train.regression_weight": 1.0,
                                            "train.regression_pairs": 32}])
def test_batch_member_trains_as_the_run_alone(overrides):
    cfg = tiny(**overrides)
    batch = trained(cfg, [3, 5], steps=5)
    for k, seed in enumerate([3, 5]):
        alone = trained(with_overrides(cfg, {"seed": seed}), None, steps=5)
        state, reference = batch.state_dict(k), alone.state_dict()
        for name in ("student", "student_ema", "fake"):
            assert_same_state(state[name], reference[name])
        assert_same_state(state["ratio"], reference["ratio"])
        assert torch.equal(state["rng"], reference["rng"])
        torch.testing.assert_close(batch.sample(200, seed=9, member=k),
                                   alone.sample(200, seed=9), **TOLERANCE)


def test_gradient_clipping_is_per_member():
    """Member 0's gradient (norm 10) is clipped to 1, member 1's (norm 0.5) is not: each as
    torch.nn.utils.clip_grad_norm_ does for that network alone."""
    weight = nn.Parameter(torch.zeros(2, 4))
    module = nn.Module()
    module.weight = weight
    target = torch.tensor([[5.0, 5.0, 5.0, 5.0], [0.25, 0.25, 0.25, 0.25]])
    optimizer = torch.optim.SGD([weight], lr=1.0)
    losses = -(weight * target).sum(dim=1)  # gradient of member k: -target[k]
    stepped = apply_update(losses, optimizer, module, clip=1.0)
    assert stepped.tolist() == [True, True]
    torch.testing.assert_close(weight.detach()[0], torch.full((4,), 0.5), atol=1e-5, rtol=0)
    torch.testing.assert_close(weight.detach()[1], target[1])


def test_a_member_with_a_non_finite_gradient_skips_its_step_alone():
    weight = nn.Parameter(torch.ones(2, 3))
    module = nn.Module()
    module.weight = weight
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    apply_update((weight ** 2).sum(dim=1), optimizer, module, clip=math.inf)  # Adam state
    before = weight.detach().clone()
    moments = optimizer.state[weight]["exp_avg"].clone()
    losses = torch.stack([(weight[0] ** 2).sum(), (weight[1] * float("nan")).sum()])
    stepped = apply_update(losses, optimizer, module, clip=math.inf)
    assert stepped.tolist() == [True, False]
    assert not torch.equal(weight.detach()[0], before[0])
    assert torch.equal(weight.detach()[1], before[1])
    assert torch.equal(optimizer.state[weight]["exp_avg"][1], moments[1])


def test_a_diverged_member_freezes_and_the_others_train_on():
    cfg = tiny(**{"train.max_nonfinite_steps": 2})
    batch = Distiller(cfg, teacher_for(cfg), [0, 1])
    alone = Distiller(cfg, teacher_for(cfg), [0])
    with torch.no_grad():
        next(iter(batch.student.parameters()))[1].fill_(float("nan"))
    for _ in range(4):
        batch.step()
        alone.step()
    assert batch.status == [Status.RUNNING, Status.DIVERGED]
    # NaN samples make member 1's critic updates non-finite too: two in a row in step 1.
    assert batch.member_steps == [4, 1]
    assert batch.running() == [0]
    assert_same_state(batch.state_dict(0)["student"], alone.state_dict()["student"])


def test_a_member_checkpoint_resumes_alone_as_in_the_batch():
    cfg = tiny()
    batch = trained(cfg, [0, 1], steps=3)
    alone = Distiller(with_overrides(cfg, {"seed": 1}), teacher_for(cfg))
    alone.load_state_dict(batch.state_dict(1))
    for _ in range(2):
        batch.step()
        alone.step()
    assert_same_state(batch.state_dict(1)["student"], alone.state_dict()["student"])


def test_seed_batch_writes_each_run_as_run_experiment_does(tmp_path):
    cfg = tiny()
    started = time.perf_counter()
    results = run_seed_batch(cfg, [0, 1], [tmp_path / "b0", tmp_path / "b1"])
    elapsed = time.perf_counter() - started
    # Each member records its share of the batch's time: the shares sum to at most the call's.
    assert all(r.wall_time_s > 0 for r in results)
    assert sum(r.wall_time_s for r in results) <= elapsed
    for seed, result in zip([0, 1], results, strict=True):
        alone = run_experiment(with_overrides(cfg, {"seed": seed}), tmp_path / f"a{seed}")
        assert result.status is Status.FINISHED
        assert result.generator_steps == alone.generator_steps == cfg.train.generator_steps
        assert result.metrics.keys() == alone.metrics.keys()
        for key, value in alone.metrics.items():
            assert result.metrics[key] == pytest.approx(value, rel=1e-3, abs=1e-4), key
        steps = [json.loads(line)["step"]
                 for line in (result.run_dir / METRICS_FILE).read_text().splitlines()]
        assert steps == [json.loads(line)["step"] for line in
                         (alone.run_dir / METRICS_FILE).read_text().splitlines()]
        assert json.loads((result.run_dir / "config.json").read_text())["seed"] == seed
        assert json.loads((result.run_dir / "provenance.json").read_text())["seed_batch"] == [0, 1]


def test_seed_batch_members_at_different_steps_resume_as_separate_batches(tmp_path):
    """A kill between two members' checkpoint writes leaves them at different steps: each
    resumes from its own checkpoint and ends as its run alone does."""
    cfg = tiny(**{"train.generator_steps": 8, "log_every": 1, "checkpoint_every": 2})
    dirs = [tmp_path / "s0", tmp_path / "s1"]
    reference = run_seed_batch(cfg, [0, 1], [tmp_path / "r0", tmp_path / "r1"])
    stops = {0: 2, 1: 6}  # member 0 stopped at its step-2 checkpoint, member 1 at step 6

    class Stop(Exception):
        pass

    for k, stop in stops.items():
        def at_checkpoint(record, saved, stop=stop):
            if saved is not None and record["step"] == stop:
                raise Stop
        with pytest.raises(Stop):
            run_experiment(with_overrides(cfg, {"seed": k}), dirs[k], on_report=at_checkpoint)
    for k in stops:
        assert (dirs[k] / CHECKPOINT_DIR).exists() and not (dirs[k] / FINAL_FILE).exists()
    results = run_seed_batch(cfg, [0, 1], dirs)
    for result, expected in zip(results, reference, strict=True):
        assert result.generator_steps == expected.generator_steps
        for key, value in expected.metrics.items():
            assert result.metrics[key] == pytest.approx(value, rel=1e-3, abs=1e-4), key


def test_seed_batch_refuses_repeated_seeds(tmp_path):
    with pytest.raises(ValueError, match="repeats a seed"):
        run_seed_batch(tiny(), [1, 1], [tmp_path / "a", tmp_path / "b"])
