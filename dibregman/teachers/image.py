"""Image teachers: an EDM-preconditioned U-Net trained by denoising score matching.

Training (Karras et al. 2022, §5): ``ln sigma ~ N(p_mean, p_std^2)``, loss
``lambda(sigma) ||D(x + sigma n, sigma) - x||^2`` with ``lambda = (sigma^2 + sd^2) / (sigma sd)^2``,
AdamW, an EMA of the weights (the EMA is the teacher). Teachers are cached by a hash of their
config, so sweeps load a trained teacher instead of training it again; training checkpoints and
resumes. With ``image_teacher.class_conditional`` the U-Net takes the image's class (one-hot,
:mod:`dibregman.labels`) and learns ``D(x, sigma, y)``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dibregman.cache import cache_root
from dibregman.config import Config, ImageTeacherConfig
from dibregman.data import DataError, ImageDataset, load_dataset
from dibregman.evaluators import ImageEvaluator
from dibregman.labels import one_hot
from dibregman.losses import dsm_loss
from dibregman.networks import Denoiser, UNet, ema_update, init_parameters
from dibregman.noise import expand_sigma
from dibregman.teachers.base import Teacher, TeacherKind

TEACHER_FILE = "teacher.pt"
STATE_FILE = "state.pt"
LOG_FILE = "log.jsonl"


def teacher_key(cfg: ImageTeacherConfig) -> str:
    """16 hex chars identifying a teacher: the hash of every field but ``path`` (and of
    ``class_conditional`` only when set, so unconditional teachers keep the keys they had
    before the field existed)."""
    fields = {k: v for k, v in dataclasses.asdict(cfg).items()
              if k != "path" and not (k == "class_conditional" and not v)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def teacher_dir(cfg: ImageTeacherConfig) -> Path:
    """``cfg.path`` if set, else ``<cache>/teachers/<dataset>-<key>``."""
    if cfg.path:
        return Path(cfg.path)
    return cache_root() / "teachers" / f"{cfg.dataset.replace(':', '_').replace('/', '_')}-" \
                                      f"{teacher_key(cfg)}"


def build_denoiser(cfg: ImageTeacherConfig, data: ImageDataset, label_dim: int | None = None
                   ) -> Denoiser:
    """The teacher's architecture for ``data``'s images: ``Denoiser(UNet)``, taking
    ``data.num_classes`` labels when ``cfg.class_conditional``, or labels of width
    ``label_dim`` when given (a text teacher's embeddings).

    Raises:
        DataError: a class-conditional teacher of unlabelled data.
    """
    if label_dim is None:
        label_dim = 0
        if cfg.class_conditional:
            if not data.num_classes:
                raise DataError(f"image_teacher.class_conditional needs labelled images; "
                                f"{data.name} has no classes")
            label_dim = data.num_classes
    return Denoiser(UNet(data.images.shape[1], cfg.channels, tuple(cfg.channel_mult),
                         label_dim=label_dim), cfg.sigma_data)


class ImageTeacher(Teacher):
    """A trained image denoiser as a :class:`Teacher`.

    ``sample`` runs EDM's Heun sampler (``2 * sampler_steps - 1`` evaluations);
    ``sample_data`` draws from the training images (the teacher-side class of the ratio
    estimator by default, as in DMD2 and f-distill), of the requested classes when the
    teacher is class-conditional.

    Args:
        network: the EMA denoiser ``D(x, sigma, labels)`` (frozen here).
        data: the dataset it was trained on.
        cfg: its config; ``cfg.class_conditional`` makes it a teacher of ``data.num_classes``
            classes.
    """

    kind = TeacherKind.IMAGE
    evaluator = ImageEvaluator

    def __init__(self, network: torch.nn.Module, data: ImageDataset,
                 cfg: ImageTeacherConfig) -> None:
        self.network = network.eval().requires_grad_(False)
        self.data = data
        self.cfg = cfg
        self.sigma_min = cfg.sigma_min
        self.sigma_max = cfg.sigma_max
        self.sigma_data = cfg.sigma_data
        self.sampler_steps = cfg.sampler_steps
        self.shape = tuple(data.images.shape[1:])
        self.num_classes = data.num_classes if cfg.class_conditional else 0
        if data.num_classes:  # images by class: class c is rows starts[c] ... + counts[c] - 1
            self._by_class = torch.argsort(data.labels, stable=True)
            self._class_counts = torch.bincount(data.labels.clamp(min=0),
                                                minlength=data.num_classes)
            self._class_starts = torch.cumsum(self._class_counts, 0) - self._class_counts

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device) -> ImageTeacher:
        """The cached teacher of ``cfg.image_teacher``, trained first if missing."""
        return load_teacher(cfg.image_teacher, device=str(device))

    @classmethod
    def class_conditional(cls, cfg: Config) -> bool:
        return cfg.image_teacher.class_conditional

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device: str | torch.device) -> ImageTeacher:
        self.network.to(device)
        return self

    @torch.no_grad()
    def denoise(self, x: Tensor, sigma: Tensor | float, labels: Tensor | None = None) -> Tensor:
        sigma = expand_sigma(sigma, x).reshape(-1).expand(x.shape[0])
        return self.network(x, sigma, labels)

    @torch.no_grad()
    def sample(self, n: int, rng: torch.Generator, labels: Tensor | None = None) -> Tensor:
        latents = torch.randn(n, *self.shape, generator=rng, device=rng.device)
        return self.sample_from(latents, labels)

    def sample_from(self, latents: Tensor, labels: Tensor | None = None) -> Tensor:
        """Heun samples from standard-normal ``latents: (B, *shape)`` on any device."""
        labels = None if labels is None else labels.to(self.device)
        return super().sample_from(latents.to(self.device), labels)

    def sample_data(self, n: int, rng: torch.Generator, labels: Tensor | None = None) -> Tensor:
        """``n`` training images drawn uniformly with replacement; with one-hot ``labels:
        (n, C)``, image ``i`` uniformly among those of class ``labels[i]``."""
        if labels is None:
            index = torch.randint(len(self.data.images), (n,), generator=rng, device=rng.device)
            return self.data.images[index.cpu()].to(self.device)
        return self.images_of_classes(labels.argmax(dim=1).cpu(), rng)

    def images_of_classes(self, classes: Tensor, rng: torch.Generator) -> Tensor:
        """One training image of each class ``classes: (n,)``, uniformly among that class's,
        on the teacher's device."""
        uniform = torch.rand(len(classes), generator=rng, device=rng.device).cpu()
        offset = (uniform * self._class_counts[classes]).long()
        index = self._by_class[self._class_starts[classes] + offset]
        return self.data.images[index].to(self.device)


# ``(index (B,), rng) -> labels (B, ...)`` of the training images ``index`` (on rng's device)
Conditions = Callable[[Tensor, torch.Generator], Tensor]


def train_teacher(
    cfg: ImageTeacherConfig,
    out_dir: str | Path | None = None,
    device: str = "cpu",
    on_report: Callable[[dict[str, Any]], None] | None = None,
    conditions: Conditions | None = None,
    label_dim: int | None = None,
) -> Path:
    """Train (or resume training) a teacher; returns its directory.

    A class-conditional teacher takes the one-hot class of each image; ``conditions`` (with its
    labels' width ``label_dim``) gives other labels, e.g. a text teacher's caption embeddings.

    Writes ``config.json``, ``log.jsonl`` (loss every ``log_every`` steps), ``state.pt``
    (resumable: weights, EMA, optimiser, RNG, step) and, at the end, ``teacher.pt`` (the EMA
    weights). A directory that already holds ``teacher.pt`` is returned as it is.
    """
    out = Path(out_dir) if out_dir else teacher_dir(cfg)
    if (out / TEACHER_FILE).exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    data = load_dataset(cfg.dataset, cfg.data_dir or None)
    images = data.images.to(device)
    if conditions is None and cfg.class_conditional:
        classes = one_hot(data.labels.clamp(min=0), data.num_classes).to(device)
        conditions = lambda index, rng: classes[index]  # noqa: E731 - one line, no state
    rng = torch.Generator(device=device).manual_seed(cfg.seed)
    network = build_denoiser(cfg, data, label_dim)
    init_parameters(network, torch.Generator().manual_seed(cfg.seed), zero_last=True)
    network.to(device)
    ema = copy.deepcopy(network).requires_grad_(False)
    optimiser = torch.optim.AdamW(network.parameters(), lr=cfg.lr)
    step = 0
    if (out / STATE_FILE).exists():
        state = torch.load(out / STATE_FILE, weights_only=True, map_location=device)
        network.load_state_dict(state["network"])
        ema.load_state_dict(state["ema"])
        optimiser.load_state_dict(state["optimiser"])
        rng.set_state(state["rng"].cpu())
        step = state["step"]
    started = time.perf_counter()
    with (out / LOG_FILE).open("a") as log:
        while step < cfg.steps:
            index = torch.randint(len(images), (cfg.batch_size,), generator=rng, device=device)
            x0 = images[index]
            sigma = (cfg.p_mean + cfg.p_std * torch.randn(cfg.batch_size, generator=rng,
                                                          device=device)).exp()
            noise = torch.randn(x0.shape, generator=rng, device=device)
            denoised = network(x0 + expand_sigma(sigma, x0) * noise, sigma,
                               None if conditions is None else conditions(index, rng))
            loss = dsm_loss(denoised, x0, sigma, cfg.sigma_data).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            ema_update(ema, network, cfg.ema_decay)
            step += 1
            if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                tmp = out / (STATE_FILE + ".tmp")
                torch.save({"network": network.state_dict(), "ema": ema.state_dict(),
                            "optimiser": optimiser.state_dict(), "rng": rng.get_state(),
                            "step": step}, tmp)
                os.replace(tmp, out / STATE_FILE)
            if step % cfg.log_every == 0 or step == cfg.steps:
                record = {"step": step, "loss": loss.item(),
                          "elapsed_s": time.perf_counter() - started}
                log.write(json.dumps(record) + "\n")
                log.flush()
                if on_report is not None:
                    on_report(record)
    tmp = out / (TEACHER_FILE + ".tmp")
    torch.save(ema.state_dict(), tmp)
    os.replace(tmp, out / TEACHER_FILE)
    (out / STATE_FILE).unlink(missing_ok=True)
    return out


def load_teacher(cfg: ImageTeacherConfig, device: str = "cpu",
                 on_report: Callable[[dict[str, Any]], None] | None = None) -> ImageTeacher:
    """The teacher of ``cfg`` from its directory, trained first if it is not there yet."""
    directory = train_teacher(cfg, device=device, on_report=on_report)
    data = load_dataset(cfg.dataset, cfg.data_dir or None)
    network = build_denoiser(cfg, data)
    network.load_state_dict(torch.load(directory / TEACHER_FILE, weights_only=True,
                                       map_location="cpu"))
    return ImageTeacher(network, data, cfg).to(device)
