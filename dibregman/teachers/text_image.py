"""``text_digits``: a CPU-sized text-to-image teacher this package trains itself.

The teacher is an EDM U-Net over scikit-learn's 8x8 digits (or MNIST), conditioned on a caption
as Stable Diffusion is: through the frozen text tower of a CLIP trained first
(:mod:`dibregman.text`), whose ``(B, E)`` embedding of the caption enters the U-Net's label
embedding. Training pairs each image with a random prompt of its digit from the prompt set
(``text.prompts``) and replaces it by the empty prompt ``""`` with probability
``text.caption_dropout``, so the one network is also the unconditional denoiser
``D(x, sigma, "")``. Sampling and distillation read the guided denoiser (classifier-free
guidance, Ho & Salimans 2022, arXiv 2207.12598)::

    D_w(x, sigma, c) = D(x, sigma, "") + w (D(x, sigma, c) - D(x, sigma, ""))

at ``w = text.guidance_scale`` (two evaluations in one batch; ``w = 1``: ``D(x, sigma, c)``
alone). The guidance scale is a sampling setting, not part of the trained teacher: teachers are
cached by everything else.

The conditions are the prompts: condition ``k`` is prompt ``k`` of the set, its labels the text
embedding ``(E,)``; students, fake scores and the ratio network take the same embeddings (the
students and fake scores are unguided copies of the U-Net, as in DMD2).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor

from dibregman.cache import cache_root
from dibregman.config import Config, ImageTeacherConfig, TextConfig
from dibregman.data import DataError, ImageDataset, load_dataset
from dibregman.evaluators.text_image import TextImageEvaluator
from dibregman.noise import expand_sigma
from dibregman.teachers.base import guided_denoise
from dibregman.teachers.image import TEACHER_FILE, ImageTeacher, build_denoiser, train_teacher
from dibregman.text import PromptSet, TextTower, cached_clip, load_prompts, template_prompts


def text_teacher_dir(image: ImageTeacherConfig, text: TextConfig, prompts: PromptSet) -> Path:
    """``image.path`` if set, else ``<cache>/teachers/text-<dataset>-<key>``: the key hashes the
    image teacher's settings, the prompts and the text settings the training reads (not the
    guidance scale)."""
    if image.path:
        return Path(image.path)
    fields = {"image": dataclasses.asdict(image), "prompts": prompts.prompts,
              "caption_dropout": text.caption_dropout, "embed_dim": text.embed_dim,
              "encoder_steps": text.encoder_steps}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / "teachers" / f"text-{image.dataset}-{key}"


def digits_data(image: ImageTeacherConfig) -> ImageDataset:
    """The dataset of ``image``, which must be labelled by the digits 0-9.

    Raises:
        DataError: another dataset.
    """
    data = load_dataset(image.dataset, image.data_dir or None)
    if data.num_classes != 10:
        raise DataError(f"teacher text_digits captions digits: image_teacher.dataset must hold "
                        f"the 10 digit classes (digits, mnist or a folder of 10 class folders "
                        f"0-9); {data.name} has {data.num_classes} classes")
    return data


class TextDigitsTeacher(ImageTeacher):
    """The guided text-to-image denoiser of the module docstring as a :class:`Teacher`.

    Args:
        network: the EMA denoiser ``D(x, sigma, labels)`` with labels ``(B, E)`` (frozen).
        data: its digit images.
        cfg: its image settings.
        encoder: the frozen CLIP text tower of the captions.
        prompts: the prompt set; ``num_classes = len(prompts)``.
        guidance_scale: ``w``.
        clip_model: the CLIP folder of the CLIP score (``text.clip_model``); "" for the
            package's evaluation CLIP.
    """

    evaluator = TextImageEvaluator
    text_conditional = True

    def __init__(self, network: torch.nn.Module, data: ImageDataset, cfg: ImageTeacherConfig,
                 encoder: TextTower, prompts: PromptSet, guidance_scale: float,
                 clip_model: str = "") -> None:
        super().__init__(network, data, cfg)
        self.prompts = prompts
        self.clip_model = clip_model
        self.num_classes = len(prompts)
        self.guidance_scale = guidance_scale
        with torch.no_grad():
            self.embeddings = encoder(list(prompts.prompts))  # (C, E)
            self.null = encoder([""])[0]  # (E,)

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device) -> TextDigitsTeacher:
        """The cached teacher of ``cfg.image_teacher`` and ``cfg.text``, its text encoder and
        U-Net trained first if missing."""
        image, text = cfg.image_teacher, cfg.text
        data = digits_data(image)
        prompts = load_prompts(text.prompts)
        encoder = cached_clip(data.images, data.labels, template_prompts(), text.embed_dim,
                              text.encoder_steps, seed=image.seed).text
        directory = text_teacher_dir(image, text, prompts)
        if not (directory / TEACHER_FILE).exists():
            train_teacher(image, directory, device=str(device),
                          conditions=caption_conditions(data, prompts, encoder,
                                                        text.caption_dropout, device),
                          label_dim=text.embed_dim)
        network = build_denoiser(image, data, text.embed_dim)
        network.load_state_dict(torch.load(directory / TEACHER_FILE, weights_only=True,
                                           map_location="cpu"))
        return cls(network, data, image, encoder, prompts, text.guidance_scale,
                   text.clip_model).to(device)

    @classmethod
    def class_conditional(cls, cfg: Config) -> bool:
        return True

    @property
    def condition_dim(self) -> int:
        return self.embeddings.shape[1]

    def to(self, device: str | torch.device) -> TextDigitsTeacher:
        super().to(device)
        self.embeddings = self.embeddings.to(device)
        self.null = self.null.to(device)
        return self

    def condition(self, ids: Tensor) -> Tensor:
        """Text embeddings ``(B, E)`` of the prompts ``ids: (B,)``, on ``ids``' device."""
        return self.embeddings[ids.to(self.embeddings.device)].to(ids.device)

    def prompt_ids(self, labels: Tensor) -> Tensor:
        """``(B,)`` the prompt whose embedding each row of ``labels: (B, E)`` is (the nearest
        row of the prompt set's embeddings: the rows are those embeddings)."""
        return torch.cdist(labels.float(), self.embeddings.to(labels.device)).argmin(dim=1)

    @torch.no_grad()
    def denoise(self, x: Tensor, sigma: Tensor | float, labels: Tensor | None = None) -> Tensor:
        """``D_w(x, sigma, c)`` for text embeddings ``labels: (B, E)``."""
        sigma = expand_sigma(sigma, x).reshape(-1).expand(x.shape[0])
        return guided_denoise(self.network, x, sigma, labels, self.null, self.guidance_scale)

    def sample_data(self, n: int, rng: torch.Generator, labels: Tensor | None = None) -> Tensor:
        """``n`` training images; with text embeddings ``labels: (n, E)``, image ``i`` uniformly
        among those of the digit its prompt names."""
        if labels is None:
            return super().sample_data(n, rng)
        digits = self.prompts.digits[self.prompt_ids(labels).cpu()]
        return self.images_of_classes(digits, rng)


def caption_conditions(data: ImageDataset, prompts: PromptSet, encoder: TextTower,
                       dropout: float, device: torch.device):
    """The teacher's training labels: ``(index (B,), rng) -> (B, E)`` embeddings of a random
    prompt of each image's digit, the empty prompt's with probability ``dropout``.

    Raises:
        DataError: a digit of the data that no prompt names.
    """
    missing = sorted(set(range(10)) - set(prompts.digits.tolist()))
    if missing:
        raise DataError(f"the prompt set names no prompt of digit(s) {missing}; the teacher "
                        f"needs captions of every digit it is trained on")
    with torch.no_grad():
        table = encoder(list(prompts.prompts)).to(device)
        null = encoder([""])[0].to(device)
    by_digit = [torch.nonzero(prompts.digits == d).flatten().to(device) for d in range(10)]
    counts = torch.tensor([len(p) for p in by_digit], device=device)
    starts = torch.cumsum(counts, 0) - counts
    flat = torch.cat(by_digit)
    digits = data.labels.to(device)

    def conditions(index: Tensor, rng: torch.Generator) -> Tensor:
        d = digits[index]
        pick = (torch.rand(len(index), generator=rng, device=rng.device) * counts[d]).long()
        labels = table[flat[starts[d] + pick]]
        drop = torch.rand(len(index), generator=rng, device=rng.device) < dropout
        return torch.where(drop[:, None], null.expand_as(labels), labels)

    return conditions
