"""Pretrained image teachers: a network imported from EDM or diffusers (``bench teacher
import``; :mod:`dibregman.pretrained`), distilled like the project's own image teachers.

Config: ``teacher = "pretrained"``, ``image_teacher.path`` the imported directory
(``model.safetensors`` + ``architecture.json``), ``image_teacher.dataset`` / ``data_dir`` the
images it was trained on (the ratio estimator's teacher side, the metrics' reference). The
teacher's noise range is the config's ``[sigma_min, sigma_max]`` clipped to the network's own
range where its record states one (as EDM's sampler clips its 0.002 ... 80 to a VP network's
range); ``sigma_data`` is the record's where it states one, else the config's. A
class-conditional network (``label_dim > 0``, e.g. ``edm-cifar10-32x32-cond-vp``) is distilled
class-conditionally and needs ``image_teacher.class_conditional = true`` and a dataset with as
many classes.
"""

from __future__ import annotations

import dataclasses

import torch

from dibregman.config import Config
from dibregman.data import load_dataset
from dibregman.pretrained import load_imported, read_record
from dibregman.pretrained.store import noise_range
from dibregman.teachers.image import ImageTeacher


class PretrainedTeacher(ImageTeacher):
    """An imported denoiser ``D(x, sigma, labels)`` over the images of
    ``cfg.image_teacher.dataset``."""

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device) -> PretrainedTeacher:
        image = cfg.image_teacher
        if not image.path:
            raise ValueError("teacher 'pretrained' needs image_teacher.path: the directory "
                             "`bench teacher import edm|diffusers ... --out DIR` wrote")
        record = read_record(image.path)
        label_dim = record.get("label_dim", 0)
        if bool(label_dim) != image.class_conditional:
            raise ValueError(
                f"{image.path} is a class-conditional network ({label_dim} classes): set "
                f"image_teacher.class_conditional=true" if label_dim else
                f"{image.path} is an unconditional network: it cannot be distilled with "
                f"image_teacher.class_conditional=true")
        data = load_dataset(image.dataset, image.data_dir or None)
        if label_dim and label_dim != data.num_classes:
            raise ValueError(f"{image.path} has {label_dim} classes, but dataset "
                             f"{image.dataset!r} has {data.num_classes}")
        shape = tuple(data.images.shape[1:])
        expected = (record.get("img_channels"), record.get("img_resolution"),
                    record.get("img_resolution"))
        if None not in expected and shape != expected:
            raise ValueError(f"{image.path} models {'x'.join(map(str, expected))} images, but "
                             f"dataset {image.dataset!r} has {'x'.join(map(str, shape))}")
        sigma_min, sigma_max = noise_range(image.sigma_min, image.sigma_max, record)
        resolved = dataclasses.replace(image, sigma_min=sigma_min, sigma_max=sigma_max,
                                       sigma_data=record.get("sigma_data") or image.sigma_data)
        return cls(load_imported(image.path), data, resolved).to(device)
