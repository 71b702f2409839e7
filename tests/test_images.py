"""Image teachers and students: DSM training, the Heun sampler, student initialisation, runs."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from bench.cli import app
from dibregman.config import ImageTeacherConfig, with_overrides
from dibregman.distill import Distiller
from dibregman.losses import dsm_loss
from dibregman.networks import Denoiser, GroupNorm, UNet, ema_update, init_parameters
from dibregman.noise import expand_sigma
from dibregman.presets import get_preset
from dibregman.run import run_experiment
from dibregman.sampling import heun_sample
from dibregman.teachers import teacher_for
from dibregman.teachers.image import build_denoiser, load_teacher, train_teacher


def tiny_digits(**overrides):
    return with_overrides(get_preset("digits-tiny"), overrides)


def test_unet_keeps_shape_for_every_dataset_size():
    for channels, size, mult in [(1, 8, (1, 2)), (1, 28, (1, 2)), (3, 32, (1, 2, 2, 2))]:
        net = Denoiser(UNet(channels, 8, mult), 0.5)
        x = torch.randn(2, channels, size, size)
        assert net(x, torch.tensor([0.1, 10.0])).shape == x.shape


def test_group_norm_is_torchs_in_fp32_and_stays_bf16_under_autocast():
    torch.manual_seed(0)
    norm = GroupNorm(24)
    reference = torch.nn.GroupNorm(8, 24)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    reference.load_state_dict(norm.state_dict())
    x = torch.randn(4, 24, 8, 8) * 3 + 1
    assert torch.equal(norm(x), reference(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # CUDA's autocast would give fp32
        half = norm(x.bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), reference(x), atol=0.05, rtol=0.02)


def test_ema_update_interpolates_every_parameter():
    torch.manual_seed(0)
    live, averaged = UNet(1, channels=8), UNet(1, channels=8)
    before = [p.clone() for p in averaged.parameters()]
    ema_update(averaged, live, decay=0.9)
    for old, new, source in zip(before, averaged.parameters(), live.parameters(), strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * source)


def test_teacher_training_lowers_the_dsm_loss(tmp_path):
    cfg = ImageTeacherConfig(dataset="digits", channels=8, steps=60, batch_size=64,
                             ema_decay=0.5, log_every=20, checkpoint_every=20)
    directory = train_teacher(cfg, tmp_path / "teacher")
    generator = torch.Generator().manual_seed(0)
    teacher = load_teacher(ImageTeacherConfig(**{**cfg.__dict__, "path": str(directory)}))
    x0 = teacher.data.images[:256]
    sigma = (torch.randn(256, generator=generator) * 1.2 - 1.2).exp()
    noise = torch.randn(x0.shape, generator=generator)
    untrained = build_denoiser(cfg, teacher.data)
    init_parameters(untrained, torch.Generator().manual_seed(cfg.seed), zero_last=True)
    noised = x0 + expand_sigma(sigma, x0) * noise
    with torch.no_grad():
        before = dsm_loss(untrained(noised, sigma), x0, sigma, cfg.sigma_data).mean()
        after = dsm_loss(teacher.network(noised, sigma), x0, sigma, cfg.sigma_data).mean()
    assert after < 0.8 * before, (float(before), float(after))
    losses = [json.loads(line)["loss"] for line in (directory / "log.jsonl").open()]
    assert len(losses) == 3 and not (directory / "state.pt").exists()


def test_teacher_training_resumes_from_its_checkpoint(tmp_path):
    cfg = ImageTeacherConfig(dataset="digits", channels=8, steps=20, batch_size=16,
                             log_every=10, checkpoint_every=10)
    reference = train_teacher(cfg, tmp_path / "straight")

    class Stop(Exception):
        pass

    def stop_at_10(record):
        if record["step"] == 10:
            raise Stop

    with pytest.raises(Stop):
        train_teacher(cfg, tmp_path / "resumed", on_report=stop_at_10)
    assert (tmp_path / "resumed" / "state.pt").exists()
    resumed = train_teacher(cfg, tmp_path / "resumed")
    a = torch.load(reference / "teacher.pt", weights_only=True)
    b = torch.load(resumed / "teacher.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_heun_sampler_uses_35_evaluations_and_is_exact_on_a_gaussian():
    """For data N(0, s^2 I) the denoiser is s^2 / (s^2 + sigma^2) x; the probability-flow ODE
    maps N(0, sigma_max^2) exactly onto N(0, s^2), so Heun's samples have std s."""
    s = 0.7
    calls = []

    def denoise(x, sigma):
        calls.append(1)
        scale = s**2 / (s**2 + sigma.double() ** 2)
        return (scale.reshape(-1, *[1] * (x.ndim - 1)) * x.double()).to(x.dtype)

    latents = torch.randn(20000, 4, generator=torch.Generator().manual_seed(0))
    heun_sample(denoise, latents, num_steps=18)
    assert len(calls) == 35
    # Discretisation error of 18 Heun steps: 5 %; it vanishes as the grid is refined.
    exact = (latents.std() * s * 80 / (s**2 + 80**2) ** 0.5).item()
    errors = [abs(heun_sample(denoise, latents, num_steps=n).std().item() - exact) / exact
              for n in (18, 40, 100)]
    assert errors[0] < 0.06 and errors[2] < 0.002 and errors[0] > errors[1] > errors[2]


def test_student_starts_as_the_teachers_one_step_denoiser():
    cfg = tiny_digits()
    teacher = teacher_for(cfg)
    distiller = Distiller(cfg, teacher)
    z = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    sigma = torch.full((5,), cfg.train.sigma_init)
    with torch.no_grad():
        torch.testing.assert_close(distiller.student(z),
                                   teacher.denoise(cfg.train.sigma_init * z, sigma))
        torch.testing.assert_close(distiller.fake(z, sigma), teacher.denoise(z, sigma))


@pytest.mark.parametrize(("generator", "estimator"), [("reverse_kl", "classifier"),
                                                      ("pearson", "ulsif")])
def test_digits_tiny_run_end_to_end(tmp_path, generator, estimator):
    """A digits run ends with every declared final metric, finite; a class coverage that counts
    classes; its samples picture; and a student whose FD moved away from its step-0 value."""
    cfg = tiny_digits(**{"generator.name": generator, "ratio.estimator": estimator})
    result = run_experiment(cfg, tmp_path)
    assert result.status == "finished"

    provenance = json.loads((tmp_path / "provenance.json").read_text())
    declared = {m["key"]: m for m in provenance["metrics"]}
    final_keys = {k for k, m in declared.items() if m["stage"] == "final" and m["role"] != "cost"}
    assert {"fd_cls_n512", "precision_cls_k3_n256", "recall_cls_k3_n256",
            "class_coverage_n512"} <= final_keys
    final = json.loads((tmp_path / "final_metrics.json").read_text())
    assert set(final["metrics"]) == set(result.metrics) == final_keys
    assert all(math.isfinite(v) for v in result.metrics.values()), result.metrics
    assert all(math.isfinite(final[k]) and final[k] > 0 for k in ("wall_time_s", "steps_per_s"))
    coverage = result.metrics["class_coverage_n512"]
    assert 0 <= coverage <= 1 and coverage * 10 == pytest.approx(round(coverage * 10))  # k/10

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert records[0]["step"] == 0 and records[-1]["step"] == cfg.train.generator_steps
    assert "weight_max" in records[-1]
    assert declared["fd_cls_n256"]["stage"] == "curve"
    start, end = records[0]["fd_cls_n256"], records[-1]["fd_cls_n256"]  # same latents
    assert math.isfinite(start) and math.isfinite(end)
    assert end != pytest.approx(start, rel=1e-3), "the student did not change"

    picture = tmp_path / "samples.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 5_000
    assert "domain classifier" in provenance["metric_protocol"]["fd_cls"]


def test_reverse_kl_identity_holds_on_images():
    def trained(force):
        cfg = tiny_digits(**{"method": "dmd" if force else "di_bregman"})
        d = Distiller(cfg, teacher_for(cfg))
        for _ in range(2):
            d.step()
        return d.student.state_dict()

    weighted, forced = trained(False), trained(True)
    assert all(torch.equal(weighted[k], forced[k]) for k in weighted)


def test_compile_option_compiles_every_network_in_place(monkeypatch):
    """``compile=true`` compiles the student, the fake score, the ratio network and the teacher
    network in place, and a training step runs each through its compiled call.

    Observed through public API only: ``nn.Module.compile`` is documented to compile the
    module's ``__call__`` with ``torch.compile`` (arguments passed as-is) and to route later
    calls of the module through the result. ``torch.compile`` is replaced by a stand-in that
    records which module's call it was given and returns an eager wrapper that records each call
    (no compile time, and no reading of ``_compiled_call_impl``). "In place": the compiled
    objects are the ones the Distiller and the teacher hold, with unchanged state-dict keys
    (``torch.compile(module)`` would return a wrapper with ``_orig_mod.`` keys).
    """
    compiled, called = [], []

    def stand_in(fn, *args, **kwargs):
        module = fn.__self__  # the bound __call__ of the module being compiled
        compiled.append(module)

        def call(*a, **k):
            called.append(module)
            return fn(*a, **k)

        return call

    monkeypatch.setattr(torch, "compile", stand_in)
    teacher = teacher_for(tiny_digits())
    plain = Distiller(tiny_digits(), teacher)
    assert compiled == []
    d = Distiller(tiny_digits(compile=True), teacher)
    networks = {id(m): m for m in (d.student, d.fake, d.ratio.network, teacher.network)}
    assert len(networks) == 4
    assert sorted(map(id, compiled)) == sorted(networks)  # each exactly once, nothing else
    assert all(isinstance(m, torch.nn.Module) for m in networks.values())
    plain_state, state = plain.state_dict(), d.state_dict()
    for name in ("student", "student_ema", "fake", "ratio"):
        assert state[name].keys() == plain_state[name].keys(), name
    fresh = teacher_for(tiny_digits()).network
    assert teacher.network.state_dict().keys() == fresh.state_dict().keys()
    d.step()
    assert {id(m) for m in called} == set(networks)  # every forward went through its compile


@pytest.mark.slow  # its domain classifier trains on 5,000 28x28 images first (a minute)
def test_mnist_tiny_runs(tmp_path):
    result = run_experiment(with_overrides(get_preset("mnist-tiny"),
                                           {"train.generator_steps": 2}), tmp_path)
    assert result.status == "finished" and "fd_cls_n512" in result.metrics


def test_cifar10_offline_is_a_clear_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["run", "--preset", "cifar10-tiny", "--set",
                                      f"image_teacher.data_dir={tmp_path}", "--out",
                                      str(tmp_path / "run")])
    if result.exit_code == 0:
        pytest.skip("CIFAR-10 could be downloaded: this machine is online")
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "cifar-10-python.tar.gz" in text and "--data-dir" in text
    assert not (tmp_path / "run").exists()
