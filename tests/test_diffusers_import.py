"""Importing a diffusers UNet2DModel + scheduler folder as an EDM-convention denoiser
(dibregman/pretrained/diffusers_unet.py): tiny random networks, CPU, offline."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from dibregman.pretrained import load_imported  # noqa: E402
from dibregman.pretrained.diffusers_unet import (  # noqa: E402
    DiffusersDenoiser,
    build,
    import_diffusers,
)
from dibregman.pretrained.store import CheckpointError, read_record  # noqa: E402

STEPS = (0, 10, 500, 999)


class Payload:
    """A pickled object beyond tensors and containers: torch.load(weights_only=True) refuses
    it."""


def tiny_unet(seed: int = 0, **extra) -> diffusers.UNet2DModel:
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), **extra).eval()


def save_pipeline(folder, unet, scheduler):
    unet.save_pretrained(folder / "unet")
    scheduler.save_pretrained(folder / "scheduler")
    return folder


def ddpm(prediction_type: str) -> diffusers.DDPMScheduler:
    # clip_sample off: clipping x0 is a sampler device, not part of the denoiser.
    return diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type,
                                   clip_sample=False)


def sigma_of(scheduler, t: int) -> float:
    abar = float(scheduler.alphas_cumprod[t])
    return math.sqrt((1 - abar) / abar)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "class"])
def test_denoiser_matches_scheduler_pred_original_sample(tmp_path, prediction_type,
                                                          conditional):
    unet = tiny_unet(num_class_embeds=5 if conditional else None)
    scheduler = ddpm(prediction_type)
    out = import_diffusers(save_pipeline(tmp_path / "src", unet, scheduler), tmp_path / "out")
    denoiser = load_imported(out)
    assert isinstance(denoiser, DiffusersDenoiser) and not denoiser.training
    assert denoiser.label_dim == (5 if conditional else 0)

    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    noise = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    labels = torch.tensor([1, 4]) if conditional else None
    for dtype in (torch.float64, torch.float32):
        unet.to(dtype)
        denoiser.to(dtype)
        for t in STEPS:
            steps = torch.full((2,), t, dtype=torch.long)
            x_t = scheduler.add_noise(x0, noise, steps).to(dtype)
            with torch.no_grad():
                model_output = unet(x_t, steps, class_labels=labels).sample
            expected = scheduler.step(model_output, t, x_t).pred_original_sample
            sigma = sigma_of(scheduler, t)
            got = denoiser(x_t * math.sqrt(1 + sigma**2), torch.full((2,), sigma), labels)
            assert got.dtype == dtype
            # In float64 the conversion is exact to 1e-5. In float32, x = x_t sqrt(1 + sigma^2)
            # is itself rounded at ~6e-8 * sigma (sigma_999 ~ 157), and so is diffusers' own
            # (x_t - sqrt(1 - abar) eps) / sqrt(abar): the tolerance scales with sigma.
            atol = 1e-5 if dtype == torch.float64 else 1e-5 * (1 + sigma)
            torch.testing.assert_close(got, expected, atol=atol, rtol=1e-5,
                                       msg=f"{dtype} t={t}")


def test_class_conditional_accepts_one_hot_labels_and_refuses_missing_ones(tmp_path):
    unet = tiny_unet(num_class_embeds=5)
    out = import_diffusers(save_pipeline(tmp_path / "src", unet, ddpm("epsilon")),
                           tmp_path / "out")
    denoiser = load_imported(out)
    x = torch.randn(2, 3, 8, 8)
    indices = torch.tensor([0, 3])
    one_hot = torch.nn.functional.one_hot(indices, 5).float()
    torch.testing.assert_close(denoiser(x, 1.0, one_hot), denoiser(x, 1.0, indices))
    with pytest.raises(ValueError, match="class-conditional"):
        denoiser(x, 1.0)


def test_unconditional_refuses_class_labels(tmp_path):
    out = import_diffusers(save_pipeline(tmp_path / "src", tiny_unet(), ddpm("epsilon")),
                           tmp_path / "out")
    with pytest.raises(ValueError, match="unconditional"):
        load_imported(out)(torch.randn(1, 3, 8, 8), 1.0, torch.tensor([0]))


def test_record_is_json_with_the_schedule(tmp_path):
    scheduler = ddpm("v_prediction")
    out = import_diffusers(save_pipeline(tmp_path / "src", tiny_unet(), scheduler),
                           tmp_path / "out")
    record = read_record(out)
    assert record["format"] == "diffusers"
    assert record["scheduler_class"] == "DDPMScheduler"
    assert record["prediction_type"] == "v_prediction"
    assert record["label_dim"] == 0
    assert record["img_resolution"] == 8 and record["img_channels"] == 3
    assert record["sigma_min"] == pytest.approx(sigma_of(scheduler, 0), rel=1e-6)
    assert record["sigma_max"] == pytest.approx(sigma_of(scheduler, 999), rel=1e-6)
    assert record["source"]["path"] == str((tmp_path / "src").resolve())
    assert record["unet_config"]["block_out_channels"] == [8, 16]
    json.dumps(record)  # JSON-safe
    assert isinstance(build(record), DiffusersDenoiser)


def test_flat_folder_layout_imports(tmp_path):
    unet, scheduler = tiny_unet(), ddpm("epsilon")
    unet.save_pretrained(tmp_path / "flat")
    scheduler.save_pretrained(tmp_path / "flat")
    out = import_diffusers(tmp_path / "flat", tmp_path / "out")
    assert read_record(out)["scheduler_class"] == "DDPMScheduler"


def test_interpolated_sigma_gives_timestep_between_its_neighbours(tmp_path):
    scheduler = ddpm("epsilon")
    out = import_diffusers(save_pipeline(tmp_path / "src", tiny_unet(), scheduler),
                           tmp_path / "out")
    denoiser = load_imported(out)
    for t in (0, 10, 500, 998):
        low, high = sigma_of(scheduler, t), sigma_of(scheduler, t + 1)
        assert float(denoiser.timestep(torch.tensor(low))) == pytest.approx(t, abs=1e-4)
        between = denoiser.timestep(torch.tensor(math.sqrt(low * high)))
        assert t < float(between) < t + 1
        assert float(between) == pytest.approx(t + 0.5, abs=1e-4)  # linear in log sigma
    # clamped to the table's range
    assert float(denoiser.timestep(torch.tensor(1e-6))) == 0.0
    assert float(denoiser.timestep(torch.tensor(1e6))) == 999.0


def test_table_stays_float64_when_network_is_cast(tmp_path):
    out = import_diffusers(save_pipeline(tmp_path / "src", tiny_unet(), ddpm("epsilon")),
                           tmp_path / "out")
    denoiser = load_imported(out).to(torch.bfloat16)
    assert denoiser.log_sigmas.dtype == torch.float64
    assert denoiser.unet.dtype == torch.bfloat16


def test_edm_scheduler_uses_its_own_preconditioning(tmp_path):
    unet, scheduler = tiny_unet(), diffusers.EDMEulerScheduler(sigma_data=0.5)
    out = import_diffusers(save_pipeline(tmp_path / "src", unet, scheduler), tmp_path / "out")
    denoiser = load_imported(out)
    assert denoiser.schedule == "edm"
    x = torch.randn(2, 3, 8, 8)
    sigma = torch.tensor([0.1, 5.0])
    s = sigma.reshape(-1, 1, 1, 1)
    with torch.no_grad():
        model_output = unet(scheduler.precondition_inputs(x, s),
                            scheduler.precondition_noise(sigma)).sample
    expected = scheduler.precondition_outputs(x, model_output, s)
    torch.testing.assert_close(denoiser(x, sigma), expected, atol=1e-5, rtol=1e-5)


def test_missing_folder_gives_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such folder.*unet/ and scheduler/"):
        import_diffusers(tmp_path / "absent", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bench_teacher_import_diffusers(tmp_path):
    """The command imports a folder (exit 0) and refuses a folder without a scheduler with
    exit 2, writing nothing."""
    from typer.testing import CliRunner

    from bench.cli import app

    source = save_pipeline(tmp_path / "src", tiny_unet(), ddpm("epsilon"))
    good = CliRunner().invoke(app, ["teacher", "import", "diffusers", str(source), "--out",
                                    str(tmp_path / "teacher")])
    assert good.exit_code == 0, good.output
    assert read_record(tmp_path / "teacher")["format"] == "diffusers"

    tiny_unet().save_pretrained(tmp_path / "bare" / "unet")
    bad = CliRunner().invoke(app, ["teacher", "import", "diffusers", str(tmp_path / "bare"),
                                   "--out", str(tmp_path / "refused")])
    assert bad.exit_code == 2 and "scheduler" in bad.output
    assert not (tmp_path / "refused").exists()


def test_missing_scheduler_subfolder_gives_checkpoint_error(tmp_path):
    tiny_unet().save_pretrained(tmp_path / "src" / "unet")
    with pytest.raises(CheckpointError, match="scheduler_config.json"):
        import_diffusers(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def rename_class(config_path, class_name: str) -> None:
    """Rewrite the ``_class_name`` of a saved diffusers config."""
    config = json.loads(config_path.read_text())
    config["_class_name"] = class_name
    config_path.write_text(json.dumps(config))


def test_unknown_scheduler_gives_checkpoint_error_listing_supported(tmp_path):
    src = save_pipeline(tmp_path / "src", tiny_unet(), ddpm("epsilon"))
    rename_class(src / "scheduler" / "scheduler_config.json", "os.system")
    with pytest.raises(CheckpointError, match=r"unsupported diffusers scheduler 'os.system'; "
                                              r"supported: DDPMScheduler, DDIMScheduler"):
        import_diffusers(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_not_a_unet2dmodel_gives_checkpoint_error(tmp_path):
    src = save_pipeline(tmp_path / "src", tiny_unet(), ddpm("epsilon"))
    rename_class(src / "unet" / "config.json", "UNet2DConditionModel")
    with pytest.raises(CheckpointError, match="expected a UNet2DModel, found UNet2DCondition"):
        import_diffusers(src, tmp_path / "out")


def test_pickled_weights_load_only_with_weights_only(tmp_path):
    unet = tiny_unet()
    src = save_pipeline(tmp_path / "src", unet, ddpm("epsilon"))
    (src / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(unet.state_dict(), src / "unet" / "diffusion_pytorch_model.bin")
    out = import_diffusers(src, tmp_path / "out")
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        expected = x - 2.0 * unet(x / math.sqrt(5.0), load_imported(out).timestep(
            torch.tensor(2.0)).float().reshape(1)).sample
    torch.testing.assert_close(load_imported(out)(x, 2.0), expected, atol=1e-5, rtol=1e-5)

    torch.save({"weights": Payload()}, src / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refused, only tensors and plain containers") \
            as caught:
        import_diffusers(src, tmp_path / "out2")
    assert "weights_only=False" not in str(caught.value)  # never advises turning it off
    assert not (tmp_path / "out2").exists()


def test_a_cosine_schedule_keeps_its_true_largest_sigma():
    """squaredcos_cap_v2 ends at abar ~ 2.4e-9: sigma_max is sqrt((1 - abar) / abar) of the
    scheduler's own last abar (about 2e4), not the 4096 a floor of 2^-24 would give."""
    from dibregman.pretrained.diffusers_unet import _vp_log_sigmas

    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000,
                                        beta_schedule="squaredcos_cap_v2")
    last = float(scheduler.alphas_cumprod[-1])
    assert last < 2.0**-24
    truth = math.sqrt((1 - last) / last)
    sigma_max = math.exp(float(_vp_log_sigmas(scheduler)[-1]))
    assert sigma_max == pytest.approx(truth, rel=1e-9) and sigma_max > 10_000


def test_without_diffusers_build_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(CheckpointError, match=r"pip install 'dibregman\[diffusers\]'"):
        build({"format": "diffusers", "unet_config": {}, "scheduler_class": "DDPMScheduler",
               "scheduler_config": {}})
