"""A short probe of a run's training cost (``bench sweep --dry-run --probe-steps N``): what a
sweep will cost, measured before it runs. Timed on the local device (:func:`probe`), or, for an
imported text-to-image teacher too large to time at its batch here, counted in FLOPs on a
stand-in and scaled (:func:`flop_probe`)."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from dibregman.config import Config, with_overrides
from dibregman.device import resolve_device
from dibregman.distill import Distiller
from dibregman.networks import ConvEncoder, RatioNetwork
from dibregman.pretrained.diffusers_text import (
    SD15_ARCHITECTURE,
    forward_flops,
    import_diffusers_text,
    save_tiny_pipeline,
)
from dibregman.pretrained.store import RECORD_FILE, read_record
from dibregman.teachers import teacher_entry, teacher_for
from dibregman.teachers.text_pretrained import PretrainedTextTeacher
from dibregman.validation import validate


@dataclass(frozen=True)
class Probe:
    """Seconds per generator step (``critic_steps_per_generator_step`` critic updates and one
    student update) of a config on ``device``, timed over ``steps`` steps after one untimed
    step (compilation, allocator and cache warm-up)."""

    seconds_per_step: float
    steps: int
    device: str

    def run_hours(self, cfg: Config) -> float:
        """Training hours of one run of ``cfg``: ``seconds_per_step * generator_steps / 3600``
        (evaluations, the fake score's warm-up and the regression pairs not included)."""
        return self.seconds_per_step * cfg.train.generator_steps / 3600


def probe(cfg: Config, steps: int = 3) -> Probe:
    """Build ``cfg``'s teacher and networks, take one untimed generator step, then time
    ``steps`` more (CUDA synchronised before each clock reading)."""
    if steps < 1:
        raise ValueError(f"probe steps must be >= 1, got {steps}")
    validate(cfg)
    distiller = Distiller(cfg, teacher_for(cfg, resolve_device(cfg.device)))
    sync = torch.cuda.synchronize if distiller.device.type == "cuda" else (lambda: None)
    distiller.step()
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        distiller.step()
    sync()
    return Probe((time.perf_counter() - started) / steps, steps, str(distiller.device))


# The assumptions of a FLOP-count estimate: a device's dense bf16 tensor-core peak (NVIDIA H100
# SXM, 989 TFLOP/s) and the share of it training reaches (the cifar10 preset measured 33.6 % on
# an H200 under torch.compile, benchmarks/perf.py --mfu).
PEAK_FLOPS = 989e12
ASSUMED_MFU = 0.35
STAND_IN_BATCH = 2


@dataclass(frozen=True)
class FlopProbe:
    """FLOPs of one generator step of a config at its global batch, from a measured stand-in
    (see :func:`flop_probe`), and the assumptions that turn them into device time.

    Attributes:
        flops_per_step: FLOPs of ``critic_steps_per_generator_step`` critic updates and one
            student update at ``train.batch_size``.
        notes: what was measured, what was counted and how it was scaled, one line each.
        mfu, peak_flops: the assumed model-FLOPs utilisation and device peak (FLOP/s).
    """

    flops_per_step: float
    notes: tuple[str, ...]
    mfu: float = ASSUMED_MFU
    peak_flops: float = PEAK_FLOPS

    def run_hours(self, cfg: Config) -> float:
        """Device-hours of one run: ``flops_per_step * generator_steps / (mfu * peak) / 3600``
        (evaluations, the fake score's warm-up and the regression pairs not included)."""
        return self.flops_per_step * cfg.train.generator_steps / (self.mfu * self.peak_flops) \
            / 3600


def uses_flop_probe(cfg: Config) -> bool:
    """Whether ``cfg``'s cost is estimated by :func:`flop_probe`: an imported text-to-image
    teacher, a network too large for a timed probe of its batch on the probing machine."""
    return issubclass(teacher_entry(cfg.teacher).teacher_class, PretrainedTextTeacher)


def flop_probe(cfg: Config, steps: int = 1) -> FlopProbe:
    """FLOPs per generator step of ``cfg`` (an imported text-to-image teacher), without its
    weights.

    Measured: ``steps`` critic steps and ``steps`` student steps of the real trainer
    (:class:`Distiller`, ``cfg`` with its method, guidance, GAN term and teacher side) on a
    stand-in, a tiny random pipeline of the same layout
    (:func:`~dibregman.pretrained.diffusers_text.save_tiny_pipeline`) at batch
    :data:`STAND_IN_BATCH` on the CPU, under ``FlopCounterMode``, split by network: U-Nets
    (teacher, fake score, student), text encoder, ratio network; a generator step is
    ``critic_steps_per_generator_step`` critic steps and one student step. Counted: each network's
    forward FLOPs per sample for the stand-in and for the real architecture (the import's record
    at ``image_teacher.path``, else the architecture the preset names, e.g. Stable Diffusion
    1.5's): the U-Net and text encoder on the meta device, the small ratio network on the
    CPU. Scaled: each network's measured FLOPs by its forward ratio
    (real / stand-in), and all by ``train.batch_size / STAND_IN_BATCH`` (FLOPs are linear in
    the batch). Assumed: a network's forward-plus-backward FLOPs scale as its forward FLOPs.

    Raises:
        ValueError: no import at ``image_teacher.path`` and no architecture for the preset, or
            a pixel-space teacher with ``text.prompts=folder:PATH`` (the stand-in is latent).
    """
    if steps < 1:
        raise ValueError(f"probe steps must be >= 1, got {steps}")
    validate(cfg)
    architectures = {"sd15-fdistill": SD15_ARCHITECTURE}
    path = Path(cfg.image_teacher.path)
    if (path / RECORD_FILE).is_file():
        record, source = read_record(path), f"the import at {path}"
    elif cfg.preset in architectures:
        record, source = architectures[cfg.preset], f"preset {cfg.preset}'s architecture"
    else:
        raise ValueError(f"{path} holds no imported teacher, and preset {cfg.preset!r} names "
                         f"no architecture to count (known: {', '.join(architectures)})")
    latent = record.get("vae_config") is not None
    if not latent and cfg.text.prompts.startswith("folder:"):
        raise ValueError("the FLOP probe of a pixel-space text-to-image teacher takes "
                         "text.prompts=file:PATH")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        teacher_dir = import_diffusers_text(
            save_tiny_pipeline(root / "pipeline", record["prediction_type"], vae=latent),
            root / "teacher")
        prompts = ["a red cat", "two dogs", "a blue house", "a tree"]
        if cfg.text.prompts.startswith("folder:"):
            from PIL import Image

            (root / "data").mkdir()
            for i, prompt in enumerate(prompts):
                Image.new("RGB", (16, 16), (60 * i, 90, 200)).save(root / "data" / f"{i}.png")
                (root / "data" / f"{i}.txt").write_text(prompt)
            spec = f"folder:{root / 'data'}"
        else:
            (root / "prompts.txt").write_text("\n".join(prompts))
            spec = f"file:{root / 'prompts.txt'}"
        small = with_overrides(cfg, {"image_teacher.path": str(teacher_dir), "text.prompts": spec,
                                     "train.batch_size": STAND_IN_BATCH, "device": "cpu",
                                     "precision": "fp32", "compile": False})
        stand_in_record = read_record(teacher_dir)
        distiller = Distiller(small, teacher_for(small))
        # A generator step is K critic steps and a student step, each of fixed FLOPs: count
        # `steps` of each and weigh the critic's by K.
        counts = []
        for update, weight in ((distiller.critic_step, cfg.train.critic_steps_per_generator_step),
                               (distiller.student_step, 1)):
            with FlopCounterMode(display=False) as counter:
                for _ in range(steps):
                    update()
            counts.append((counter, weight / steps))
    groups = {"DiffusersTextDenoiser": "unet", "DenoiserStudent": "unet", "CLIPTextModel": "text",
              "RatioNetwork": "ratio"}
    measured = {"unet": 0.0, "text": 0.0, "ratio": 0.0}
    total = 0.0
    for counter, weight in counts:
        total += weight * counter.get_total_flops()
        for name, ops in counter.get_flop_counts().items():
            if name in groups:
                measured[groups[name]] += weight * sum(ops.values())
    measured["rest"] = total - sum(measured.values())
    full, stand_in = forward_flops(record), forward_flops(stand_in_record)

    def ratio_flops(rec: dict) -> float:
        shape = (rec["img_channels"], rec["img_resolution"], rec["img_resolution"])
        tokens = rec["text_encoder_config"]["max_position_embeddings"]
        net = RatioNetwork(ConvEncoder(shape[0], label_dim=rec["label_dim"]), 1.0)
        x, labels = torch.zeros(1, *shape), torch.zeros(1, tokens, rec["label_dim"])
        with torch.no_grad(), FlopCounterMode(display=False) as ratio_counter:
            net(x, torch.ones(1), labels)
        return float(ratio_counter.get_total_flops())

    full["ratio"], stand_in["ratio"] = ratio_flops(record), ratio_flops(stand_in_record)
    full["rest"], stand_in["rest"] = full["unet"], stand_in["unet"]
    batch_scale = cfg.train.batch_size / STAND_IN_BATCH
    per_step = batch_scale * sum(measured[k] * full[k] / stand_in[k] for k in measured)
    equivalents = measured["unet"] / (STAND_IN_BATCH * stand_in["unet"])
    notes = (
        f"measured: {steps} critic and {steps} student step(s) of this config on a tiny "
        f"random stand-in pipeline at batch {STAND_IN_BATCH} (FlopCounterMode): {total:.3g} "
        f"FLOPs per generator step of {cfg.train.critic_steps_per_generator_step} critic steps, "
        f"U-Nets {measured['unet'] / total:.1%}, text encoder {measured['text'] / total:.1%}, "
        f"ratio network {measured['ratio'] / total:.1%}; {equivalents:.1f} U-Net forward "
        f"equivalents per sample per generator step",
        f"counted (meta device): {source}: U-Net forward {full['unet'] / 1e9:.4g} GFLOPs per "
        f"sample, text encoder {full['text'] / 1e9:.4g} GFLOPs per prompt, ratio network "
        f"{full['ratio'] / 1e9:.3g} GFLOPs per sample",
        f"scaled: each network by its forward FLOPs (real / stand-in), x "
        f"{cfg.train.batch_size}/{STAND_IN_BATCH} for the batch: {per_step:.4g} FLOPs per "
        f"generator step",
        f"assumed: forward+backward FLOPs scale as forward FLOPs; {ASSUMED_MFU:.0%} MFU of a "
        f"{PEAK_FLOPS / 1e12:.0f} TFLOP/s device (H100 SXM dense bf16 peak)",
    )
    return FlopProbe(per_step, notes)
