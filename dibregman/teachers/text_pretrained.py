"""Imported text-to-image teachers: a diffusers pipeline (Stable Diffusion layout) imported by
``bench teacher import diffusers PATH`` (:mod:`dibregman.pretrained.diffusers_text`), distilled
over a prompt set with classifier-free guidance.

Config: ``teacher = "pretrained_text"``; ``image_teacher.path`` the imported directory;
``text.prompts`` the prompt set, whose prompts are the teacher's conditions:

* ``file:PATH``: one prompt per non-empty line. The teacher has no data then, so the ratio
  estimator's teacher side must be the teacher's own samples (``ratio.teacher_side=teacher``);
* ``folder:PATH``: captioned images (every ``.png``/``.jpg``/``.jpeg``/``.bmp`` with a caption
  in the ``.txt`` file of the same stem), whose distinct captions are the prompts and whose
  images (VAE latents for a latent model) are the teacher-side data of their captions.

``text.guidance_scale`` is the guidance ``w``: ``D_w = D(x, sigma, "") + w (D(x, sigma, c) -
D(x, sigma, ""))``, one batched evaluation of both conditions (one evaluation for ``w = 1``).
The noise range is the config's ``image_teacher`` range clipped to the network's, and
``sigma_data`` is the import's (1 for SD latents), else ``image_teacher.sigma_data``.

Students are measured by :class:`~dibregman.evaluators.PipelineEvaluator`: the Fréchet distance
of pooled decoded images against the teacher's own samples, and the CLIP score in the CLIP model
of ``text.clip_model``, a local folder (required).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dibregman.config import Config
from dibregman.data import IMAGE_SUFFIXES
from dibregman.evaluators import PipelineEvaluator
from dibregman.metrics.clip import DOWNLOAD_HINT
from dibregman.noise import expand_sigma
from dibregman.pretrained import load_imported, read_record
from dibregman.pretrained.diffusers_text import (
    FORMAT,
    decode,
    encode_images,
    encode_prompts,
    load_text_encoder,
    load_vae,
)
from dibregman.pretrained.store import noise_range
from dibregman.teachers.base import Teacher, TeacherKind, guided_denoise


def captioned_images(root: Path) -> tuple[list[str], list[Path]]:
    """Captions and paths of every image under ``root`` with a same-stem ``.txt`` caption
    (sorted by path; images without one are skipped; whitespace in captions collapsed).

    Raises:
        ValueError: no such folder, or no captioned image in it.
    """
    if not root.is_dir():
        raise ValueError(f"text.prompts folder:{root}: not a directory")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                   and p.with_suffix(".txt").is_file())
    if not paths:
        raise ValueError(f"text.prompts folder:{root}: no image with a caption (an image "
                         f"{'/'.join(IMAGE_SUFFIXES)} and a .txt file of the same stem)")
    return [" ".join(p.with_suffix(".txt").read_text().split()) for p in paths], paths


def load_images(paths: list[Path]) -> Tensor:
    """RGB images ``(N, 3, H, W)`` in ``[-1, 1]`` of ``paths``.

    Raises:
        ValueError: images of different sizes.
    """
    from PIL import Image

    pixels = []
    for path in paths:
        with Image.open(path) as picture:
            pixels.append(np.asarray(picture.convert("RGB")))
        if pixels[-1].shape != pixels[0].shape:
            raise ValueError(f"captioned images must share one size; {paths[0]} is "
                             f"{pixels[0].shape[1]}x{pixels[0].shape[0]}, {path} is "
                             f"{pixels[-1].shape[1]}x{pixels[-1].shape[0]}")
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 127.5 - 1


def read_prompts(spec: str) -> tuple[list[str], list[str] | None, list[Path] | None]:
    """The prompt set of ``text.prompts`` for an imported text-to-image teacher: ``(prompts,
    captions, image paths)``, the last two None for ``file:PATH``; a folder's prompts are its
    distinct captions in order of first appearance.

    Raises:
        ValueError: another spec, a missing or empty file, a folder without captioned images.
    """
    if spec.startswith("file:"):
        path = Path(spec.removeprefix("file:")).expanduser()
        if not path.is_file():
            raise ValueError(f"text.prompts: no prompt file {path}")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"text.prompts: {path} holds no prompt")
        return prompts, None, None
    if spec.startswith("folder:"):
        captions, paths = captioned_images(Path(spec.removeprefix("folder:")).expanduser())
        return list(dict.fromkeys(captions)), captions, paths
    raise ValueError(f"text.prompts {spec!r}: teacher 'pretrained_text' reads 'file:PATH' (one "
                     f"prompt per line) or 'folder:PATH' (captioned images)")


class PretrainedTextTeacher(Teacher):
    """An imported text-to-image denoiser with classifier-free guidance, over a prompt set.

    Attributes:
        network: the :class:`~dibregman.pretrained.diffusers_text.DiffusersTextDenoiser`
            ``D(x, sigma, c)`` without guidance (students and fake scores copy it).
        prompts: the ``C`` prompts; condition ``k`` is ``prompts[k]``.
        guidance_scale: ``w``.
        clip_model: the CLIP folder of the evaluator's CLIP score (``text.clip_model``).
        null: ``(1, L, E)`` token states of the empty prompt, the null condition.
        data: ``(N, *shape)`` teacher-side samples of captioned images (latents for a latent
            model), or None.
    """

    kind = TeacherKind.IMAGE
    evaluator = PipelineEvaluator
    text_conditional = True

    def __init__(self, directory: str | Path, prompts: list[str], guidance_scale: float,
                 sigma_range: tuple[float, float], sigma_data: float,
                 sampler_steps: int, clip_model: str) -> None:
        record = read_record(directory)
        if record.get("format") != FORMAT:
            raise ValueError(f"{directory} holds a {record.get('format')!r} import, not a "
                             f"text-to-image pipeline (import one with `bench teacher import "
                             f"diffusers PIPELINE_FOLDER --out DIR`)")
        self.network = load_imported(directory)
        self.tokenizer, self.text_encoder = load_text_encoder(directory, record)
        self.vae, self.scaling_factor = load_vae(directory, record), record["vae_scaling_factor"]
        self.prompts = list(prompts)
        self.num_classes = len(self.prompts)
        self.guidance_scale = guidance_scale
        self.sigma_min, self.sigma_max = sigma_range
        self.sigma_data = sigma_data
        self.sampler_steps = sampler_steps
        self.clip_model = clip_model
        self.shape = (record["img_channels"], record["img_resolution"], record["img_resolution"])
        self.null = encode_prompts(self.tokenizer, self.text_encoder, [""])
        self.data: Tensor | None = None

    def _set_data(self, captions: list[str], paths: list[Path], chunk: int = 64) -> None:
        """Teacher-side samples of the captioned images (read and VAE-encoded ``chunk`` at a
        time), grouped by prompt; the mean token state of every prompt, to tell which prompt a
        label is."""
        data = []
        for start in range(0, len(paths), chunk):
            images = load_images(paths[start:start + chunk])
            data.append(images if self.vae is None
                        else encode_images(self.vae, self.scaling_factor, images))
            if tuple(data[-1].shape[1:]) != self.shape:
                what = "images" if self.vae is None else "VAE latents of the images"
                raise ValueError(f"the captioned {what} have shape {tuple(data[-1].shape[1:])}, "
                                 f"the teacher's samples {self.shape}")
        position = {prompt: k for k, prompt in enumerate(self.prompts)}
        ids = torch.tensor([position[c] for c in captions])
        self.data = torch.cat(data).to(self.device)
        self._by_prompt = torch.argsort(ids, stable=True)
        self._counts = torch.bincount(ids, minlength=self.num_classes)
        self._starts = torch.cumsum(self._counts, 0) - self._counts
        self._keys = torch.cat([
            encode_prompts(self.tokenizer, self.text_encoder, self.prompts[k:k + 256]).mean(1)
            for k in range(0, self.num_classes, 256)])

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device) -> PretrainedTextTeacher:
        """The teacher of the import at ``image_teacher.path`` over ``text.prompts``.

        Raises:
            ValueError: no ``image_teacher.path`` or ``text.clip_model``; a prompt file with
                ``ratio.teacher_side=data``; a noise range outside the network's.
        """
        image, text = cfg.image_teacher, cfg.text
        if not image.path:
            raise ValueError("teacher 'pretrained_text' needs image_teacher.path: the directory "
                             "`bench teacher import diffusers PIPELINE_FOLDER --out DIR` wrote")
        if not text.clip_model:
            raise ValueError(f"teacher 'pretrained_text' needs text.clip_model: the CLIP score "
                             f"of an imported text-to-image teacher needs a local CLIP folder; "
                             f"{DOWNLOAD_HINT}")
        prompts, captions, paths = read_prompts(text.prompts)
        if paths is None and cfg.ratio.teacher_side == "data":
            raise ValueError(f"text.prompts {text.prompts!r} gives prompts but no images, so the "
                             f"ratio estimator's teacher side must be the teacher's own samples: "
                             f"set ratio.teacher_side=teacher, or text.prompts=folder:PATH "
                             f"(captioned images)")
        record = read_record(image.path)
        sigma_min, sigma_max = noise_range(image.sigma_min, image.sigma_max, record)
        teacher = cls(image.path, prompts, text.guidance_scale, (sigma_min, sigma_max),
                      record.get("sigma_data") or image.sigma_data, image.sampler_steps,
                      text.clip_model)
        teacher.to(device)
        if paths is not None:
            teacher._set_data(captions, paths)
        return teacher

    @classmethod
    def class_conditional(cls, cfg: Config) -> bool:
        """Always conditional: every sample has a prompt (its evaluation sample ``i`` has prompt
        ``i mod C``)."""
        return True

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def condition_dim(self) -> int:
        """``E``, the text encoder's hidden size (the width of the token states)."""
        return self.network.label_dim

    def to(self, device: str | torch.device) -> PretrainedTextTeacher:
        for module in (self.network, self.text_encoder, self.vae):
            if module is not None:
                module.to(device)
        self.null = self.null.to(device)
        if self.data is not None:
            self.data, self._keys = self.data.to(device), self._keys.to(device)
        return self

    def condition(self, ids: Tensor) -> Tensor:
        """Token states ``(B, L, E)`` of ``prompts[ids]`` (the pipeline's encoding), on ``ids``'
        device."""
        prompts = [self.prompts[i] for i in ids.tolist()]
        return encode_prompts(self.tokenizer, self.text_encoder, prompts).to(ids.device)

    @torch.no_grad()
    def denoise(self, x: Tensor, sigma: Tensor | float, labels: Tensor | None = None) -> Tensor:
        """``D_w(x, sigma, c) = D(x, sigma, u) + w (D(x, sigma, c) - D(x, sigma, u))`` for token
        states ``labels = c: (B, L, E)`` and the empty prompt's ``u``; ``D(x, sigma, c)`` alone
        for ``w = 1``. ``x: (B, *shape)``, ``sigma`` scalar or ``(B,)``."""
        if labels is None:
            raise ValueError("this teacher is text-conditional: pass token states (B, L, E) "
                             "from teacher.condition(ids)")
        sigma = expand_sigma(sigma, x).reshape(-1).expand(x.shape[0])
        return guided_denoise(self.network, x, sigma, labels, self.null, self.guidance_scale)

    @torch.no_grad()
    def sample(self, n: int, rng: torch.Generator, labels: Tensor | None = None) -> Tensor:
        latents = torch.randn(n, *self.shape, generator=rng, device=rng.device)
        return self.sample_from(latents, labels)

    def sample_from(self, latents: Tensor, labels: Tensor | None = None) -> Tensor:
        """Guided Heun samples from standard-normal ``latents: (B, *shape)`` on any device."""
        labels = None if labels is None else labels.to(self.device)
        return super().sample_from(latents.to(self.device), labels)

    def sample_data(self, n: int, rng: torch.Generator, labels: Tensor | None = None) -> Tensor:
        """``n`` captioned images' samples, image ``i`` uniformly among those captioned with the
        prompt of ``labels[i]`` (the prompt whose mean token state is nearest ``labels[i]``'s).

        Raises:
            ValueError: the prompt set has no images (``text.prompts=file:PATH``).
        """
        if self.data is None:
            raise ValueError("this teacher's prompt set has no images: set "
                             "ratio.teacher_side=teacher, or text.prompts=folder:PATH")
        if labels is None:
            raise ValueError("this teacher is text-conditional: pass token states (n, L, E)")
        ids = torch.cdist(labels.mean(1).float(), self._keys.float()).argmin(1).cpu()
        uniform = torch.rand(n, generator=rng, device=rng.device).cpu()
        index = self._by_prompt[self._starts[ids] + (uniform * self._counts[ids]).long()]
        return self.data[index.to(self.data.device)].to(self.device)

    def decode(self, samples: Tensor) -> Tensor:
        """Images ``(N, 3, H, W)`` in ``[-1, 1]`` of ``samples: (N, *shape)``: the VAE's decoding
        of latents, the samples themselves for a pixel model."""
        return decode(self.vae, self.scaling_factor, samples)
