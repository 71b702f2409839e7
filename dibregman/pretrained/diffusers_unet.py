"""A diffusers ``UNet2DModel`` and its noise scheduler as an EDM-convention denoiser.

This project's teachers are denoisers in the convention of Karras et al. (2022, "Elucidating the
Design Space of Diffusion-Based Generative Models", EDM): a clean image ``x0`` is noised as
``x = x0 + sigma * n`` with ``n ~ N(0, I)``, and the denoiser returns ``D(x, sigma) ~ E[x0 | x]``.
A diffusers folder written by ``save_pretrained`` (a ``DDPMPipeline``'s, with ``unet/`` and
``scheduler/`` subfolders) holds a network trained in another parameterisation;
:class:`DiffusersDenoiser` converts between the two, and :func:`import_diffusers` turns such a
folder into this project's own format (:mod:`dibregman.pretrained.store`), which
:func:`dibregman.pretrained.load_imported` loads back through :func:`build`.

Two families of schedulers are understood, each picked by class name from a fixed allow-list
(:data:`VP_SCHEDULERS`, :data:`EDM_SCHEDULERS`); no other name from a config is ever imported.

* **VP / DDPM-type** (Ho et al. 2020; Song et al. 2021): the network was trained on
  ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) n`` at integer steps ``t = 0..T-1``, with
  ``abar_t`` the scheduler's own ``alphas_cumprod``. Dividing by ``sqrt(abar_t)`` gives the EDM
  form with ``sigma_t = sqrt((1 - abar_t) / abar_t)``. So :meth:`DiffusersDenoiser.forward` feeds
  the network ``x_t = x / sqrt(1 + sigma^2)`` at the continuous step ``t(sigma)`` found by
  linear interpolation of ``t`` in ``log sigma`` over the table ``(log sigma_t, t)``, and reads
  its output by ``prediction_type``:

  - ``epsilon``: ``D = x - sigma * eps``;
  - ``sample``: ``D = x0`` (the output itself);
  - ``v_prediction`` (Salimans & Ho 2022): with ``abar = 1 / (1 + sigma^2)``,
    ``D = x0 = sqrt(abar) x_t - sqrt(1 - abar) v
    = x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) v``.

  At a table entry ``sigma = sigma_t`` this is exactly the scheduler's own
  ``step(...).pred_original_sample`` at step ``t`` (without ``clip_sample``/``thresholding``,
  which are sampler devices, not part of the denoiser). Outside the table the step is clamped
  to ``[0, T-1]`` (``sigma < sigma_0`` is fed as step 0, ``sigma > sigma_{T-1}`` as step
  ``T-1``), while the input scaling and output formulas above still use the ``sigma`` given;
  the network has never been trained there, so stay within ``[sigma_min, sigma_max]``. A
  zero-terminal-SNR schedule (``abar_{T-1} = 0``) is read with ``abar_{T-1} = 2^-24``, as
  diffusers' ``EulerDiscreteScheduler`` does. A network with a ``learned`` time embedding
  (one vector per integer step) gets the nearest integer step.

* **EDM-type** (``EDMEulerScheduler``, ``EDMDPMSolverMultistepScheduler``): the network was
  trained with EDM's preconditioning, which these schedulers implement themselves; the wrapper
  calls their ``precondition_inputs``/``precondition_noise``/``precondition_outputs``:
  ``D = c_skip x + c_out F(c_in x, c_noise)`` with ``c_in = 1 / sqrt(sigma^2 + sigma_data^2)``,
  ``c_noise = log(sigma) / 4``, ``c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)`` and
  ``c_out = +-sigma sigma_data / sqrt(sigma^2 + sigma_data^2)`` (``+`` for ``epsilon``, ``-`` for
  ``v_prediction``). ``sigma`` must be positive (``c_noise`` is a logarithm).

Class labels: a ``UNet2DModel`` built with ``num_class_embeds`` (and no ``class_embed_type``)
is class-conditional with ``label_dim = num_class_embeds``; it takes labels as integer indices
``(B,)`` or, as EDM's networks do, one-hot rows ``(B, label_dim)``. Other ``class_embed_type``s
(``timestep``, ``identity``) take no class indices and are refused at import.

diffusers is an optional dependency (``pip install 'dibregman[diffusers]'``), imported only
inside the functions that need it.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dibregman.pretrained.store import (
    CheckpointError,
    file_sha256,
    read_json_object,
    refusal_reason,
    save_imported,
)

INSTALL_HINT = "pip install 'dibregman[diffusers]'"

# Schedulers of the VP family: they expose ``alphas_cumprod`` over ``num_train_timesteps`` steps.
VP_SCHEDULERS = (
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "LMSDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
)
# Schedulers of the EDM family: they carry EDM's preconditioning themselves.
EDM_SCHEDULERS = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")

VP_PREDICTIONS = ("epsilon", "sample", "v_prediction")
EDM_PREDICTIONS = ("epsilon", "v_prediction")
LEARNED_VARIANCE = ("learned", "learned_range")
# The abar given to a zero-terminal-SNR schedule's last step (abar = 0, sigma = inf), as
# diffusers' EulerDiscreteScheduler does; every positive abar is kept as it is (a cosine
# schedule's last, 2.4e-9, gives sigma_max ~ 2e4, not the floor's 4096).
MIN_ALPHA_CUMPROD = 2.0**-24

UNET_CONFIG = "config.json"
SCHEDULER_CONFIG = "scheduler_config.json"
SAFETENSORS_WEIGHTS = "diffusion_pytorch_model.safetensors"
SAFETENSORS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
PICKLE_WEIGHTS = "diffusion_pytorch_model.bin"


def _require_diffusers() -> Any:
    """The ``diffusers`` module, or a CheckpointError saying how to install it."""
    try:
        import diffusers
    except ImportError:
        raise CheckpointError("importing or loading a diffusers teacher needs the diffusers "
                              f"package: {INSTALL_HINT}") from None
    return diffusers


def _supported() -> str:
    return ", ".join(VP_SCHEDULERS + EDM_SCHEDULERS)


def scheduler_class(name: str) -> type:
    """The diffusers scheduler class called ``name``, if it is on the allow-list.

    Raises:
        CheckpointError: ``name`` is not a supported scheduler, or the installed diffusers
            lacks it.
    """
    if name not in VP_SCHEDULERS + EDM_SCHEDULERS:
        raise CheckpointError(f"unsupported diffusers scheduler {name!r}; supported: "
                              f"{_supported()}")
    cls = getattr(_require_diffusers(), name, None)
    if cls is None:
        raise CheckpointError(f"the installed diffusers has no {name}; upgrade it "
                              f"({INSTALL_HINT})")
    return cls


def _vp_log_sigmas(scheduler: Any) -> Tensor:
    """``log sigma_t = log sqrt((1 - abar_t) / abar_t)`` for ``t = 0..T-1``, float64, CPU.

    ``abar_t`` is the scheduler's own ``alphas_cumprod`` (the noise levels the network was
    trained at and its sampler steps through), taken to float64 before any arithmetic; only an
    ``abar`` of exactly 0 takes :data:`MIN_ALPHA_CUMPROD`, every positive one is kept."""
    abar = torch.as_tensor(scheduler.alphas_cumprod).detach().to("cpu", torch.float64)
    abar = torch.where(abar > 0, abar, MIN_ALPHA_CUMPROD)
    log_sigmas = 0.5 * (torch.log1p(-abar) - torch.log(abar))
    if log_sigmas.numel() < 2 or not bool((log_sigmas.diff() > 0).all()):
        raise CheckpointError("the scheduler's alphas_cumprod must be strictly decreasing over "
                              "at least two steps (every beta in (0, 1))")
    return log_sigmas


class DiffusersDenoiser(nn.Module):
    """``D(x, sigma, class_labels=None)`` in EDM's convention around a diffusers ``UNet2DModel``.

    See the module docstring for the equations. Attributes in the style of EDM's networks:
    ``img_resolution``, ``img_channels``, ``label_dim`` (0: unconditional), ``sigma_min``,
    ``sigma_max``, ``prediction_type``, ``schedule`` (``"vp"`` or ``"edm"``).

    Args:
        unet: the ``diffusers.UNet2DModel``, kept as ``self.unet`` (its weights are this
            module's ``unet.*`` state).
        scheduler: an allow-listed diffusers scheduler the network was trained with.

    Raises:
        CheckpointError: a scheduler, prediction type or network configuration this wrapper
            cannot convert.
    """

    # The diffusers network class this wrapper converts (a subclass may take another one).
    unet_class = "UNet2DModel"

    def __init__(self, unet: nn.Module, scheduler: Any) -> None:
        super().__init__()
        name = type(scheduler).__name__
        if name not in VP_SCHEDULERS + EDM_SCHEDULERS:
            raise CheckpointError(f"unsupported diffusers scheduler {name!r}; supported: "
                                  f"{_supported()}")
        if type(unet).__name__ != self.unet_class:
            raise CheckpointError(f"expected a diffusers {self.unet_class}, got "
                                  f"{type(unet).__name__}")
        self.unet = unet
        self.scheduler = scheduler
        self.schedule = "edm" if name in EDM_SCHEDULERS else "vp"
        config, sched = unet.config, scheduler.config
        self.prediction_type = str(sched.get("prediction_type", "epsilon"))
        allowed = EDM_PREDICTIONS if self.schedule == "edm" else VP_PREDICTIONS
        if self.prediction_type not in allowed:
            raise CheckpointError(f"{name}: prediction_type {self.prediction_type!r} is not "
                                  f"supported; supported: {', '.join(allowed)}")
        if sched.get("use_flow_sigmas"):
            raise CheckpointError(f"{name}: use_flow_sigmas (a flow-matching model) is not "
                                  "supported")
        if sched.get("timestep_type", "discrete") != "discrete":
            raise CheckpointError(f"{name}: timestep_type {sched['timestep_type']!r} is not "
                                  "supported; supported: 'discrete'")

        self.time_embedding_type = config.get("time_embedding_type", "positional")
        if self.time_embedding_type not in ("positional", "learned"):
            raise CheckpointError(f"UNet2DModel time_embedding_type "
                                  f"{self.time_embedding_type!r} is not supported (the Fourier "
                                  "embedding divides by the timestep, a VE convention); "
                                  "supported: 'positional', 'learned'")
        if self.time_embedding_type == "learned" and self.schedule == "edm":
            raise CheckpointError("UNet2DModel time_embedding_type 'learned' cannot take EDM's "
                                  "continuous c_noise")
        class_embed_type = config.get("class_embed_type")
        if class_embed_type is not None:
            raise CheckpointError(f"UNet2DModel class_embed_type {class_embed_type!r} is not "
                                  "supported; class conditioning is supported through "
                                  "num_class_embeds with class_embed_type None")
        self.label_dim = int(config.get("num_class_embeds") or 0)

        self.img_channels = int(config["in_channels"])
        out_channels = int(config["out_channels"])
        learned = sched.get("variance_type") in LEARNED_VARIANCE
        if not (out_channels == self.img_channels
                or (learned and out_channels == 2 * self.img_channels)):
            raise CheckpointError(f"UNet2DModel out_channels {out_channels} does not match "
                                  f"in_channels {self.img_channels}"
                                  + ("" if learned else " (and the scheduler's variance_type "
                                     "is not learned)"))
        self.split_variance = out_channels != self.img_channels
        size = config.get("sample_size")
        if isinstance(size, (list, tuple)):
            size = size[0] if len(set(size)) == 1 else list(size)
        self.img_resolution = size

        if self.schedule == "vp":
            self._log_sigmas_cpu = _vp_log_sigmas(scheduler)
            self.sigma_min = math.exp(float(self._log_sigmas_cpu[0]))
            self.sigma_max = math.exp(float(self._log_sigmas_cpu[-1]))
        else:
            self._log_sigmas_cpu = None
            self.sigma_min = float(sched["sigma_min"])
            self.sigma_max = float(sched["sigma_max"])
        # Not in the state_dict: rebuilt from the scheduler's config.
        self.register_buffer("log_sigmas", self._log_sigmas_cpu, persistent=False)

    def _apply(self, fn: Any, recurse: bool = True) -> DiffusersDenoiser:
        # Keep the log-sigma table in float64 whatever dtype the network is cast to: in half
        # precision neighbouring entries would collide and the interpolated step be wrong.
        super()._apply(fn, recurse)
        if self._log_sigmas_cpu is not None:
            self.log_sigmas = self._log_sigmas_cpu.to(self.log_sigmas.device)
        return self

    def timestep(self, sigma: Tensor) -> Tensor:
        """The continuous VP step ``t(sigma)`` (float64, ``sigma``'s shape): ``t`` interpolated
        linearly in ``log sigma`` between the two neighbouring entries of the table
        ``(log sigma_t, t)``, clamped to ``[0, T-1]`` outside it."""
        if self.log_sigmas is None:
            raise ValueError("an EDM-type scheduler has no discrete timestep table")
        table = self.log_sigmas
        log_sigma = torch.as_tensor(sigma, device=table.device).to(torch.float64).log()
        log_sigma = log_sigma.clamp(min=float(table[0]), max=float(table[-1]))
        high = torch.searchsorted(table, log_sigma.reshape(-1)).clamp(1, table.numel() - 1)
        low = high - 1
        weight = (log_sigma.reshape(-1) - table[low]) / (table[high] - table[low])
        return (low + weight.clamp(0, 1)).reshape(log_sigma.shape)

    def _labels(self, class_labels: Tensor | None, batch: int) -> Tensor | None:
        if self.label_dim == 0:
            if class_labels is not None:
                raise ValueError("this denoiser is unconditional (the UNet2DModel has no "
                                 "num_class_embeds); call it without class_labels")
            return None
        if class_labels is None:
            raise ValueError(f"this denoiser is class-conditional ({self.label_dim} classes); "
                             "pass class_labels as indices (B,) or one-hot rows "
                             f"(B, {self.label_dim})")
        labels = torch.as_tensor(class_labels, device=self.unet.device)
        if labels.is_floating_point():
            if labels.ndim != 2 or labels.shape[1] != self.label_dim:
                raise ValueError(f"float class_labels must be one-hot rows (B, {self.label_dim})"
                                 f", got shape {tuple(labels.shape)}")
            if not bool(((labels == 0) | (labels == 1)).all() and (labels.sum(1) == 1).all()):
                raise ValueError("float class_labels must be one-hot rows (a diffusers class "
                                 "embedding has no soft or empty label)")
            labels = labels.argmax(dim=1)
        labels = labels.reshape(-1).long()
        if labels.numel() == 1:
            labels = labels.expand(batch)
        if labels.numel() != batch:
            raise ValueError(f"{labels.numel()} class labels for a batch of {batch}")
        return labels

    def _network(self, x: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        out = self.unet(x.to(self.unet.dtype), t, class_labels=labels, return_dict=False)[0]
        return out[:, : self.img_channels] if self.split_variance else out

    def forward(self, x: Tensor, sigma: Tensor | float,
                class_labels: Tensor | None = None) -> Tensor:
        """``D(x, sigma) ~ E[x0 | x]`` for ``x = x0 + sigma n``; ``sigma`` a number or one per
        sample (any shape with ``B`` elements); result in ``x``'s dtype."""
        batch = x.shape[0]
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float64).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(batch)
        if sigma.numel() != batch:
            raise ValueError(f"{sigma.numel()} sigmas for a batch of {batch}")
        labels = self._labels(class_labels, batch)
        s = sigma.reshape(-1, 1, 1, 1)

        if self.schedule == "edm":
            one, zero = torch.ones_like(s), torch.zeros_like(s)
            c_in = self.scheduler.precondition_inputs(one, s)
            c_noise = self.scheduler.precondition_noise(sigma)
            c_skip = self.scheduler.precondition_outputs(one, zero, s)
            c_out = self.scheduler.precondition_outputs(zero, one, s)
            out = self._network(x * c_in.to(x.dtype), c_noise.float(), labels)
            return (c_skip.to(x.dtype) * x + c_out.to(x.dtype) * out.to(x.dtype))

        t = self.timestep(sigma)
        t = t.round().long() if self.time_embedding_type == "learned" else t.float()
        scale = (1 + s.square()).rsqrt()  # sqrt(abar)
        out = self._network(x * scale.to(x.dtype), t, labels).to(x.dtype)
        if self.prediction_type == "epsilon":
            return x - s.to(x.dtype) * out
        if self.prediction_type == "sample":
            return out
        return x * scale.square().to(x.dtype) - (s * scale).to(x.dtype) * out


def _json_config(obj: Any) -> dict[str, Any]:
    """A diffusers config as plain JSON (arrays as lists, tuples as lists)."""
    return json.loads(obj.to_json_string())


def _layout(folder: Path) -> tuple[Path, Path]:
    """The UNet's and the scheduler's folders in a pipeline folder (``unet/`` + ``scheduler/``)
    or in one folder holding both saves (``config.json`` + ``scheduler_config.json``)."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such folder (expected a diffusers save_pretrained "
                              "folder with unet/ and scheduler/ subfolders)")
    if (folder / "unet").is_dir() or (folder / "scheduler").is_dir():
        unet_dir, sched_dir = folder / "unet", folder / "scheduler"
    elif (folder / UNET_CONFIG).is_file() and (folder / SCHEDULER_CONFIG).is_file():
        unet_dir = sched_dir = folder
    else:
        raise CheckpointError(f"{folder}: expected unet/ and scheduler/ subfolders (as "
                              f"DDPMPipeline.save_pretrained writes), or {UNET_CONFIG} and "
                              f"{SCHEDULER_CONFIG} side by side")
    if not (unet_dir / UNET_CONFIG).is_file():
        raise CheckpointError(f"{unet_dir}: missing {UNET_CONFIG} (expected a UNet2DModel "
                              "saved by save_pretrained)")
    if not (sched_dir / SCHEDULER_CONFIG).is_file():
        raise CheckpointError(f"{sched_dir}: missing {SCHEDULER_CONFIG} (expected a scheduler "
                              "saved by save_pretrained)")
    return unet_dir, sched_dir


def _class_name(path: Path) -> str:
    return str(read_json_object(path).get("_class_name"))


def _load_unet(unet_dir: Path) -> tuple[nn.Module, Path]:
    """The UNet2DModel saved in ``unet_dir`` and its weights file.

    safetensors weights are loaded by diffusers' ``from_pretrained`` (local files only,
    safetensors only); a ``.bin`` file (a pickle) is loaded only by ``torch.load`` with
    ``weights_only=True``, which unpickles tensors and containers but runs no code.
    """
    diffusers = _require_diffusers()
    found = _class_name(unet_dir / UNET_CONFIG)
    if found != "UNet2DModel":
        raise CheckpointError(f"{unet_dir / UNET_CONFIG}: expected a UNet2DModel, found {found}")
    if (unet_dir / SAFETENSORS_WEIGHTS).is_file() or (unet_dir / SAFETENSORS_INDEX).is_file():
        weights = unet_dir / SAFETENSORS_WEIGHTS
        if not weights.is_file():
            weights = unet_dir / SAFETENSORS_INDEX
        try:
            unet, info = diffusers.UNet2DModel.from_pretrained(
                unet_dir, local_files_only=True, use_safetensors=True, output_loading_info=True,
                low_cpu_mem_usage=False)
        except Exception as err:  # noqa: BLE001 - untrusted input through a third-party loader
            raise CheckpointError(f"{unet_dir}: cannot load the UNet2DModel: {err}") from None
        bad = {key: info.get(key) for key in ("missing_keys", "unexpected_keys",
                                              "mismatched_keys") if info.get(key)}
        if bad:
            raise CheckpointError(f"{weights}: weights do not match the config: {bad}")
        return unet, weights
    weights = unet_dir / PICKLE_WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{unet_dir}: no weights (expected {SAFETENSORS_WEIGHTS}, or "
                              f"{PICKLE_WEIGHTS} read with torch.load(weights_only=True))")
    try:
        unet = diffusers.UNet2DModel.from_config(
            diffusers.UNet2DModel.load_config(unet_dir, local_files_only=True))
    except Exception as err:  # noqa: BLE001 - untrusted input through a third-party loader
        raise CheckpointError(f"{unet_dir}: cannot build the UNet2DModel: {err}") from None
    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol: not the user's
            warnings.simplefilter("ignore")
            state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # an UnpicklingError for anything beyond plain tensors
        raise CheckpointError(f"{weights}: refused, only tensors and plain containers are read "
                              f"from a pickle ({refusal_reason(err)}); re-save it as "
                              f"safetensors") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{weights}: expected a state_dict")
    try:
        unet.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{weights}: weights do not match the config: {err}") from None
    return unet, weights


def denoiser_record(network: DiffusersDenoiser, unet: nn.Module, scheduler_name: str,
                    scheduler: Any) -> dict[str, Any]:
    """What every diffusers import records of its denoiser: the U-Net's and the scheduler's
    configs, the parameterisation, the noise schedule and range, the label width and the
    sample shape."""
    return {
        "unet_config": _json_config(unet),
        "scheduler_class": scheduler_name,
        "scheduler_config": _json_config(scheduler),
        "prediction_type": network.prediction_type,
        "schedule": network.schedule,
        "sigma_min": network.sigma_min,
        "sigma_max": network.sigma_max,
        "label_dim": network.label_dim,
        "img_resolution": network.img_resolution,
        "img_channels": network.img_channels,
    }


def import_diffusers(folder: str | Path, out_dir: str | Path) -> Path:
    """Import a diffusers ``UNet2DModel`` + scheduler folder into ``out_dir``; returns it.

    ``folder`` is what ``DDPMPipeline.save_pretrained`` writes (``unet/`` and ``scheduler/``
    subfolders; other subfolders are ignored), or one folder into which a ``UNet2DModel`` and
    its scheduler were both saved. Everything is read from local files only. ``out_dir`` gets
    ``model.safetensors`` (the wrapper's ``unet.*`` weights) and ``architecture.json``: format
    ``"diffusers"``, ``unet_config``, ``scheduler_class``, ``scheduler_config``,
    ``prediction_type``, ``schedule``, ``sigma_min``, ``sigma_max``, ``label_dim``,
    ``img_resolution``, ``img_channels`` and ``source`` (the folder, the weights file and its
    SHA-256).

    Raises:
        CheckpointError: no such folder, a missing subfolder/config/weights file, a network that
            is not a UNet2DModel, an unsupported scheduler or configuration, or diffusers not
            installed. Nothing is written then.
    """
    folder = Path(folder)
    unet_dir, sched_dir = _layout(folder)
    name = _class_name(sched_dir / SCHEDULER_CONFIG)
    cls = scheduler_class(name)
    try:  # a malformed config fails inside diffusers, with any exception type
        scheduler = cls.from_pretrained(sched_dir, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - untrusted input through a third-party loader
        raise CheckpointError(f"{sched_dir}: cannot load the {name}: {err}") from None
    unet, weights = _load_unet(unet_dir)
    try:
        network = DiffusersDenoiser(unet, scheduler)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - a config value of the wrong type or range
        raise CheckpointError(f"{folder}: unsupported configuration: {err}") from None
    record = {
        "format": "diffusers",
        **denoiser_record(network, unet, name, scheduler),
        "source": {"path": str(folder.resolve()), "weights": str(weights.relative_to(folder)),
                   "sha256": file_sha256(weights)},
    }
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    try:
        return save_imported(out_dir, network, record)
    except BaseException:
        for leftover in out_dir.glob("*.tmp"):
            leftover.unlink(missing_ok=True)
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise


def build_denoiser(record: dict[str, Any],
                   denoiser: type[DiffusersDenoiser] = DiffusersDenoiser) -> DiffusersDenoiser:
    """The ``denoiser`` of an import's record (its U-Net class ``denoiser.unet_class``), with
    freshly initialised weights (:func:`dibregman.pretrained.load_imported` loads the imported
    ones into it)."""
    diffusers = _require_diffusers()
    for key in ("unet_config", "scheduler_class", "scheduler_config"):
        if key not in record:
            raise CheckpointError(f"a {record.get('format', 'diffusers')} architecture record "
                                  f"needs {key!r}")
    unet = getattr(diffusers, denoiser.unet_class).from_config(record["unet_config"])
    scheduler = scheduler_class(record["scheduler_class"]).from_config(record["scheduler_config"])
    return denoiser(unet, scheduler)


def build(record: dict[str, Any]) -> nn.Module:
    """The :class:`DiffusersDenoiser` of an import's record (:func:`build_denoiser`)."""
    return build_denoiser(record)
