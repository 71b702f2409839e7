"""Importing a diffusers text-to-image pipeline (dibregman/pretrained/diffusers_text.py) and
distilling it (dibregman/teachers/text_pretrained.py): tiny random SD-layout pipelines built by
diffusers and transformers themselves, CPU, offline."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from dibregman.config import Config, with_overrides  # noqa: E402
from dibregman.distill import Distiller  # noqa: E402
from dibregman.metrics.clip import ClipScorer, ClipUnavailable, save_tiny_clip  # noqa: E402
from dibregman.pretrained import load_imported, read_record  # noqa: E402
from dibregman.pretrained.diffusers_text import (  # noqa: E402
    DiffusersTextDenoiser,
    import_diffusers_text,
    save_tiny_pipeline,
)
from dibregman.pretrained.store import CheckpointError  # noqa: E402
from dibregman.results import Stage  # noqa: E402
from dibregman.teachers import teacher_for  # noqa: E402

PROMPTS = ["a red cat", "two dogs", "a blue house"]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A tiny latent-space pipeline (epsilon, DDPM schedule), its import and a prompt file; a
    tiny CLIP beside the import (:func:`clip_folder`)."""
    root = tmp_path_factory.mktemp("text")
    source = save_tiny_pipeline(root / "pipeline", vae=True)
    out = import_diffusers_text(source, root / "teacher")
    save_tiny_clip(clip_folder(out))
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n\n")
    return source, out, root / "prompts.txt"


def clip_folder(out) -> Path:
    """The tiny CLIP of the import ``out``: its sibling folder ``clip``."""
    return Path(out).parent / "clip"


def tiny_config(out, prompts_file, **extra) -> Config:
    """One critic and one student step of the imported teacher at batch 4, guided at 1.75,
    scored by the tiny CLIP beside the import."""
    return with_overrides(Config(), {
        "teacher": "pretrained_text", "image_teacher.path": str(out),
        "image_teacher.sampler_steps": 2, "text.prompts": f"file:{prompts_file}",
        "text.clip_model": str(clip_folder(out)),
        "text.guidance_scale": 1.75, "ratio.teacher_side": "teacher",
        "train.batch_size": 4, "train.critic_steps_per_generator_step": 1,
        "train.fake_warmup_steps": 0, "train.sigma_min": 0.03, "train.sigma_max": 14.0,
        "train.sigma_init": 14.0, "train.sigma_grid_size": 50, "train.lr": 1e-3, **extra})


def sigma_of(scheduler, t: int) -> float:
    abar = float(scheduler.alphas_cumprod[t])
    return math.sqrt((1 - abar) / abar)


def encode(source, prompts):
    """Token states of ``prompts`` computed by transformers directly from the pipeline folder."""
    tokenizer = transformers.CLIPTokenizer.from_pretrained(source / "tokenizer",
                                                           local_files_only=True)
    encoder = transformers.CLIPTextModel.from_pretrained(source / "text_encoder",
                                                         local_files_only=True).eval()
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids)[0]


def test_import_writes_components_and_record(imported):
    source, out, _ = imported
    record = read_record(out)
    assert record["format"] == "diffusers_text"
    assert record["label_dim"] == 32 and record["img_channels"] == 4
    assert record["img_resolution"] == 8 and record["sigma_data"] == 1.0
    assert record["vae_scaling_factor"] == pytest.approx(0.18215)
    assert set(record["source"]) == {"path", "unet", "text_encoder", "vae"}
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "architecture.json",
                                               "text_encoder.safetensors", "vae.safetensors",
                                               "tokenizer"}
    network = load_imported(out)
    assert isinstance(network, DiffusersTextDenoiser) and not network.training
    with pytest.raises(ValueError, match="text-conditional"):
        network(torch.randn(2, 4, 8, 8), 1.0)


def test_teacher_reproduces_the_pipelines_guided_noise_prediction(imported):
    """eps_u + w (eps_c - eps_u) by diffusers' UNet on transformers' token states, against the
    teacher's D_w read back as eps_w = (x - D_w) / sigma, at table steps."""
    source, out, prompts_file = imported
    teacher = teacher_for(tiny_config(out, prompts_file))
    unet = diffusers.UNet2DConditionModel.from_pretrained(
        source / "unet", local_files_only=True, low_cpu_mem_usage=False).eval()
    scheduler = diffusers.DDPMScheduler.from_pretrained(source / "scheduler",
                                                        local_files_only=True)
    w = teacher.guidance_scale
    cond, uncond = encode(source, PROMPTS), encode(source, [""]).expand(len(PROMPTS), -1, -1)
    x_t = torch.randn(len(PROMPTS), 4, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = teacher.condition(torch.arange(len(PROMPTS)))
    torch.testing.assert_close(labels, cond, atol=1e-6, rtol=0)
    for t in (10, 500, 999):
        steps = torch.full((len(PROMPTS),), t)
        with torch.no_grad():
            eps_c = unet(x_t, steps, encoder_hidden_states=cond).sample
            eps_u = unet(x_t, steps, encoder_hidden_states=uncond).sample
        expected = eps_u + w * (eps_c - eps_u)
        sigma = sigma_of(scheduler, t)
        x = x_t * math.sqrt(1 + sigma**2)
        got = (x - teacher.denoise(x, sigma, labels)) / sigma
        diff = float((got - expected).abs().max())
        # float32: x is rounded at ~6e-8 |x| and eps = (x - D) / sigma divides that by sigma;
        # relative to the output scale |eps| ~ 1 this leaves ~1e-6 (1 + |x| / sigma).
        tolerance = 1e-5 * (1 + float(x.abs().max()) / sigma)
        print(f"t={t} sigma={sigma:.4g}: max |eps_teacher - eps_pipeline| = {diff:.3g} "
              f"(tolerance {tolerance:.3g}, output scale {float(expected.abs().max()):.3g})")
        assert diff < tolerance
    teacher.guidance_scale = 1.0  # w = 1: the conditional prediction alone
    got = (x - teacher.denoise(x, sigma, labels)) / sigma
    assert float((got - eps_c).abs().max()) < tolerance


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_conversion_matches_scheduler_pred_original_sample(tmp_path, prediction_type):
    source = save_tiny_pipeline(tmp_path / "pipeline", prediction_type=prediction_type)
    network = load_imported(import_diffusers_text(source, tmp_path / "teacher"))
    assert network.prediction_type == prediction_type
    unet = diffusers.UNet2DConditionModel.from_pretrained(
        source / "unet", local_files_only=True, low_cpu_mem_usage=False).eval()
    scheduler = diffusers.DDPMScheduler.from_pretrained(source / "scheduler",
                                                        local_files_only=True)
    gen = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    states = encode(source, ["a cat", "a dog"])
    for t in (0, 250, 999):
        steps = torch.full((2,), t)
        x_t = scheduler.add_noise(x0, noise, steps)
        with torch.no_grad():
            output = unet(x_t, steps, encoder_hidden_states=states).sample
        expected = scheduler.step(output, t, x_t).pred_original_sample
        sigma = sigma_of(scheduler, t)
        got = network(x_t * math.sqrt(1 + sigma**2), torch.full((2,), sigma), states)
        # x = x_t sqrt(1 + sigma^2) is rounded at ~6e-8 sigma in float32 (sigma_999 ~ 14.6).
        torch.testing.assert_close(got, expected, atol=1e-5 * (1 + sigma), rtol=1e-5,
                                   msg=f"{prediction_type} t={t}")


def test_pickled_weights_are_refused_with_the_file_named(tmp_path):
    source = save_tiny_pipeline(tmp_path / "pipeline")
    weights = source / "text_encoder" / "model.safetensors"
    torch.save({"anything": torch.zeros(1)}, source / "text_encoder" / "pytorch_model.bin")
    weights.unlink()
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*safe_serialization=True"):
        import_diffusers_text(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_component_outside_the_allow_list_is_refused(tmp_path):
    source = save_tiny_pipeline(tmp_path / "pipeline")
    index = (source / "model_index.json").read_text()
    (source / "model_index.json").write_text(index.replace('"CLIPTextModel"',
                                                           '"CLIPTextModelWithProjection"'))
    with pytest.raises(CheckpointError, match="text_encoder.*supported: transformers "
                                              "CLIPTextModel"):
        import_diffusers_text(source, tmp_path / "out")


def test_prompt_file_without_images_needs_the_teachers_own_samples(imported):
    _, out, prompts_file = imported
    with pytest.raises(ValueError, match="ratio.teacher_side=teacher"):
        teacher_for(tiny_config(out, prompts_file, **{"ratio.teacher_side": "data"}))


def test_one_distillation_step_moves_the_student(imported):
    _, out, prompts_file = imported
    teacher = teacher_for(tiny_config(out, prompts_file))
    assert teacher.num_classes == len(PROMPTS) and teacher.condition_dim == 32
    assert teacher.decode(torch.zeros(2, 4, 8, 8)).shape == (2, 3, 16, 16)
    distiller = Distiller(tiny_config(out, prompts_file), teacher)
    before = [p.detach().clone() for p in distiller.student.parameters()]
    critic = distiller.critic_step()[0]
    student = distiller.student_step()[0]
    print(f"critic {critic}; student {student}")
    assert all(math.isfinite(v) for v in [*critic.values(), *student.values()])
    moved = sum(not torch.equal(a, b) for a, b in zip(before, distiller.student.parameters(),
                                                      strict=True))
    assert moved > 0


def test_captioned_folder_gives_teacher_side_latents(imported, tmp_path):
    from PIL import Image

    _, out, _ = imported
    rng = torch.Generator().manual_seed(0)
    for i, caption in enumerate(["a red cat", "two dogs", "a red cat"]):
        pixels = torch.randint(0, 256, (16, 16, 3), generator=rng, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(caption + "\n")
    cfg = with_overrides(tiny_config(out, "unused"), {"text.prompts": f"folder:{tmp_path}",
                                                     "ratio.teacher_side": "data"})
    teacher = teacher_for(cfg)
    assert teacher.prompts == ["a red cat", "two dogs"]
    assert teacher.data.shape == (3, 4, 8, 8)
    drawn = teacher.sample_data(6, torch.Generator().manual_seed(1),
                                teacher.condition(torch.tensor([1, 1, 1, 0, 0, 0])))
    torch.testing.assert_close(drawn[:3], teacher.data[1].expand(3, -1, -1, -1))
    for row in drawn[3:]:  # a red cat: image 0 or 2
        assert torch.equal(row, teacher.data[0]) or torch.equal(row, teacher.data[2])


def test_bench_teacher_import_diffusers_takes_a_text_pipeline(imported, tmp_path):
    """The import command recognises a text-to-image pipeline (exit 0) and refuses one whose
    U-Net weights are only a pickle (exit 2, the file named)."""
    from typer.testing import CliRunner

    from bench.cli import app

    source, _, _ = imported
    good = CliRunner().invoke(app, ["teacher", "import", "diffusers", str(source), "--out",
                                    str(tmp_path / "teacher")])
    assert good.exit_code == 0, good.output
    assert read_record(tmp_path / "teacher")["format"] == "diffusers_text"

    pickled = save_tiny_pipeline(tmp_path / "pickled")
    (pickled / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({}, pickled / "unet" / "diffusion_pytorch_model.bin")
    bad = CliRunner().invoke(app, ["teacher", "import", "diffusers", str(pickled), "--out",
                                   str(tmp_path / "refused")])
    output = " ".join(bad.output.split())
    assert bad.exit_code == 2 and "diffusion_pytorch_model.bin" in output
    assert "safe_serialization=True" in output
    assert not (tmp_path / "refused").exists()


def test_dry_run_estimates_device_hours_from_counted_flops(imported, tmp_path):
    """`bench sweep --dry-run --probe-steps 1` on the sd15-fdistill preset with the tiny import
    as its teacher: the stand-in has the import's own architecture, so the estimate is the
    measured step's FLOPs times batch / stand-in batch, and the hours follow from the stated
    MFU and peak."""
    import re

    from typer.testing import CliRunner

    from bench.cli import app
    from dibregman.probe import ASSUMED_MFU, PEAK_FLOPS, STAND_IN_BATCH

    _, out, _ = imported
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: t2i\npreset: sd15-fdistill\ngrid:\n  generator: [reverse_kl, "
                    f"forward_kl]\nseeds: [0]\nmetric: fd_pixels_n1000\nmode: min\n"
                    f"set: {{image_teacher.path: {out}, train.batch_size: 64, "
                    f"train.critic_steps_per_generator_step: 1, train.generator_steps: 500}}\n")
    result = CliRunner().invoke(app, ["sweep", str(spec), "--dry-run", "--probe-steps", "1"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    print(text[text.index("FLOP probe"):])
    match = re.search(r"FLOP probe: ([\d.e+]+) FLOPs per generator step; 500 steps per run x 2 "
                      r"runs = about ([\d.e+-]+) device-hours", text)
    assert match, text
    per_step, hours = map(float, match.groups())
    measured = float(re.search(r"\(FlopCounterMode\): ([\d.e+]+) FLOPs per generator",
                               text).group(1))
    assert per_step == pytest.approx(measured * 64 / STAND_IN_BATCH, rel=0.01)
    assert hours == pytest.approx(per_step * 500 * 2 / (ASSUMED_MFU * PEAK_FLOPS) / 3600,
                                  rel=0.01)
    assert "counted (meta device): the import at" in text


@pytest.mark.slow
def test_sd15_dry_run_counts_the_real_architecture():
    """The SD1.5 preset's dry run without its weights: the U-Net forward counted at ~803
    GFLOPs per 64x64 latent (FlopCounterMode, meta device) and a positive estimate."""
    from typer.testing import CliRunner

    from bench.cli import app

    result = CliRunner().invoke(app, ["sweep", "sweeps/sd15-fdistill.yaml", "--dry-run",
                                      "--probe-steps", "1"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "preset sd15-fdistill's architecture: U-Net forward 803.3 GFLOPs per sample" in text
    assert "device-hours" in text


def test_evaluator_reference_is_the_teachers_samples_of_the_documented_latents(imported,
                                                                              tmp_path):
    """The evaluator's pooled-pixel FD is ~0 for the teacher's samples of the latents of
    seed eval.seed + 1 (prompts i mod C) it documents as its reference, and far from 0 for
    decoded Gaussian noise; the plot is a PNG."""
    _, out, prompts_file = imported
    cfg = with_overrides(tiny_config(out, prompts_file), {"eval.n_curve": 32})
    teacher = teacher_for(cfg)
    evaluator = teacher.build_evaluator(cfg)
    latents = torch.randn(32, *teacher.shape,
                          generator=torch.Generator().manual_seed(cfg.eval.seed + 1))
    same = teacher.sample_from(latents, teacher.condition(torch.arange(32) % len(PROMPTS)))
    noise = torch.randn(32, *teacher.shape, generator=torch.Generator().manual_seed(5))
    fd_same = evaluator.curve(same)["fd_pixels_n32"]
    fd_noise = evaluator.curve(noise)["fd_pixels_n32"]
    print(f"fd_pixels: the reference's own samples {fd_same:.3g}, noise {fd_noise:.4g}")
    assert abs(fd_same) < 1e-3 * fd_noise
    assert evaluator.plot(same, tmp_path / "samples.png", "t").stat().st_size > 0


def test_evaluator_clip_score_is_the_mean_clip_score_of_decoded_samples(imported):
    """clip_score_n{N} is the mean per-pair CLIP score of the decoded samples and their prompts,
    i mod C by default, the given prompt ids in `final`; in [0, 100]; NaN, as the FD, for a
    non-finite sample. The curve's keys are the declared curve metrics."""
    _, out, prompts_file = imported
    cfg = with_overrides(tiny_config(out, prompts_file), {"eval.n_curve": 8})
    teacher = teacher_for(cfg)
    evaluator = teacher.build_evaluator(cfg)
    samples = torch.randn(8, *teacher.shape, generator=torch.Generator().manual_seed(3))
    scorer, images = ClipScorer(clip_folder(out)), teacher.decode(samples)
    curve = evaluator.curve(samples)
    declared = {spec.key for spec in evaluator.metrics(cfg.eval) if spec.stage is Stage.CURVE}
    assert set(curve) == declared == {"fd_pixels_n8", "clip_score_n8"}
    default = scorer.score(images, [PROMPTS[i % len(PROMPTS)] for i in range(8)])
    labels = torch.tensor([2, 2, 1, 0, 0, 1, 2, 0])
    given = scorer.score(images, [PROMPTS[k] for k in labels])
    final = evaluator.final(samples, labels)["clip_score_n8"]
    print(f"clip_score: i mod C {curve['clip_score_n8']:.6g} (direct {float(default.mean()):.6g}), "
          f"given prompts {final:.6g} (direct {float(given.mean()):.6g})")
    assert curve["clip_score_n8"] == pytest.approx(float(default.mean()), rel=1e-5, abs=1e-6)
    assert final == pytest.approx(float(given.mean()), rel=1e-5, abs=1e-6)
    assert 0 < curve["clip_score_n8"] <= 100 and 0 <= final <= 100
    assert str(clip_folder(out)) in evaluator.protocol["clip_score"]
    samples[5, 0, 0, 0] = float("nan")
    assert all(math.isnan(v) for v in evaluator.final(samples).values())


def test_clip_model_is_required_and_checked_before_training(imported, tmp_path):
    """An empty text.clip_model stops the teacher's build, saying how to get a CLIP folder; an
    absent folder stops the evaluator's (built before any training step)."""
    _, out, prompts_file = imported
    with pytest.raises(ValueError) as refused:
        teacher_for(tiny_config(out, prompts_file, **{"text.clip_model": ""}))
    message = str(refused.value)
    assert ("the CLIP score of an imported text-to-image teacher needs a local CLIP folder"
            in message)
    assert "huggingface-cli download openai/clip-vit-large-patch14" in message
    assert "--set text.clip_model=DIR" in message
    cfg = tiny_config(out, prompts_file, **{"text.clip_model": str(tmp_path / "no-clip")})
    with pytest.raises(ClipUnavailable, match="no-clip does not exist"):
        teacher_for(cfg).build_evaluator(cfg)
