"""A diffusers text-to-image pipeline (Stable Diffusion layout) as a text-conditional denoiser.

A folder written by ``StableDiffusionPipeline.save_pretrained`` holds ``model_index.json`` and
the components ``unet/`` (a ``UNet2DConditionModel``), ``scheduler/``, ``text_encoder/`` (a
transformers ``CLIPTextModel``), ``tokenizer/`` (a ``CLIPTokenizer``) and, for a latent-space
model, ``vae/`` (an ``AutoencoderKL``). :func:`import_diffusers_text` turns it into this
project's own format (:mod:`dibregman.pretrained.store`); the importer of unconditional and
class-conditional ``UNet2DModel`` folders is :mod:`dibregman.pretrained.diffusers_unet`, whose
conversion this module reuses unchanged.

**Denoiser.** The network is trained on ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) n`` at steps
``t = 0 .. T-1``. In EDM's convention ``x = x0 + sigma n`` with
``sigma_t = sqrt((1 - abar_t) / abar_t)``, so :class:`DiffusersTextDenoiser` feeds the U-Net
``x_t = x / sqrt(1 + sigma^2)`` at the step ``t(sigma)`` (linear in ``log sigma`` between table
entries) with the prompt's token states ``c = E(prompt): (B, L, E)`` as
``encoder_hidden_states``, and reads its output ``F`` by the scheduler's ``prediction_type``:

* ``epsilon``: ``D(x, sigma, c) = x - sigma F``;
* ``sample``: ``D = F``;
* ``v_prediction``: ``D = x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) F``.

At a table step this is the scheduler's own ``step(F, t, x_t).pred_original_sample``
(``tests/test_diffusers_text.py`` checks it). The network applies no guidance: students and fake
scores copy it and take the same token states.

**Guidance.** The teacher (:class:`dibregman.teachers.text_pretrained.PretrainedTextTeacher`)
applies classifier-free guidance (Ho & Salimans 2022) at ``w = text.guidance_scale`` with the
empty prompt ``""`` as the null condition ``u = E("")``::

    D_w(x, sigma, c) = D(x, sigma, u) + w (D(x, sigma, c) - D(x, sigma, u)).

``D`` is affine in the network output with the same coefficients for both conditions, so this
is exactly the pipeline's guided noise prediction ``eps_w = eps_u + w (eps_c - eps_u)`` turned
into a denoiser: ``D_w = x - sigma eps_w`` (epsilon prediction).

**Text encoding**, as ``StableDiffusionPipeline.encode_prompt`` does it: the tokenizer pads
every prompt to ``tokenizer.model_max_length`` tokens (truncating longer ones) and the token
states are the text encoder's last hidden states, ``(B, L, E)`` with ``E`` its hidden size.

**Latent space.** With a ``vae/``, samples are VAE latents ``z = s * mean(Enc(image))`` of shape
``(4, H / 8, W / 8)`` for Stable Diffusion (``s`` = the VAE's ``scaling_factor``, 0.18215 for
SD 1.x, chosen so that latents have about unit variance: the import records ``sigma_data = 1``)
and images are ``Dec(z / s)`` in ``[-1, 1]`` (:func:`decode`).

**Safety.** Weights are read from safetensors files only: a component whose weights exist only
as a pickle (``.bin``, ``.ckpt``, ``.pt``, ``.pth``, ``.pkl``) is refused by name with the advice
to re-save it with ``save_pretrained(..., safe_serialization=True)``. Everything loads with
``local_files_only=True``; the classes are fixed (``UNet2DConditionModel``, ``CLIPTextModel``,
``CLIPTokenizer``, ``AutoencoderKL``, a scheduler of the allow-list of
:mod:`~dibregman.pretrained.diffusers_unet`); the names in ``model_index.json`` are only
compared against them, never imported, and no remote code is ever run.

The import writes ``model.safetensors`` (the denoiser's ``unet.*`` weights),
``text_encoder.safetensors``, ``tokenizer/`` (the tokenizer's own JSON files), ``vae.safetensors``
for a latent model, and ``architecture.json`` (format ``diffusers_text``).

diffusers and transformers are optional dependencies (``pip install 'dibregman[diffusers]'``),
imported only inside the functions that need them.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from dibregman.pretrained.diffusers_unet import (
    INSTALL_HINT,
    SAFETENSORS_INDEX,
    SAFETENSORS_WEIGHTS,
    SCHEDULER_CONFIG,
    DiffusersDenoiser,
    _json_config,
    _require_diffusers,
    build_denoiser,
    denoiser_record,
    scheduler_class,
)
from dibregman.pretrained.store import (
    CheckpointError,
    file_sha256,
    read_json_object,
    save_imported,
)

FORMAT = "diffusers_text"
PIPELINE_INDEX = "model_index.json"
# component -> (library, class) that model_index.json must declare; vae is optional.
COMPONENTS = {
    "unet": ("diffusers", "UNet2DConditionModel"),
    "text_encoder": ("transformers", "CLIPTextModel"),
    "tokenizer": ("transformers", "CLIPTokenizer"),
    "vae": ("diffusers", "AutoencoderKL"),
}
TOKENIZER_CLASSES = ("CLIPTokenizer", "CLIPTokenizerFast")
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
TEXT_ENCODER_FILE = "text_encoder.safetensors"
VAE_FILE = "vae.safetensors"
TOKENIZER_DIR = "tokenizer"


def is_text_pipeline(folder: str | Path) -> bool:
    """Whether ``folder`` looks like a text-to-image pipeline: a ``model_index.json`` that names
    a ``text_encoder`` (a ``DDPMPipeline``'s names none)."""
    index = Path(folder) / PIPELINE_INDEX
    return index.is_file() and '"text_encoder"' in index.read_text(errors="replace")


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise CheckpointError("a text-to-image teacher needs the transformers package: "
                              f"{INSTALL_HINT}") from None
    return transformers


class DiffusersTextDenoiser(DiffusersDenoiser):
    """``D(x, sigma, c)`` in EDM's convention around a diffusers ``UNet2DConditionModel``.

    The schedule and output conversion are :class:`DiffusersDenoiser`'s (see the module
    docstrings). ``c`` are the text encoder's token states ``(B, L, E)``, passed to the U-Net as
    ``encoder_hidden_states``; ``label_dim`` is ``E``. No guidance is applied here.

    Raises:
        CheckpointError: an SDXL-style U-Net (``addition_embed_type``), a class-embedding one,
            or a scheduler / configuration :class:`DiffusersDenoiser` refuses.
    """

    unet_class = "UNet2DConditionModel"

    def __init__(self, unet: nn.Module, scheduler: Any) -> None:
        config = unet.config
        if config.get("addition_embed_type") is not None:
            raise CheckpointError(f"UNet2DConditionModel addition_embed_type "
                                  f"{config['addition_embed_type']!r} (SDXL's pooled text and "
                                  "size conditioning) is not supported; supported: None")
        if config.get("num_class_embeds") is not None:
            raise CheckpointError("a UNet2DConditionModel with num_class_embeds is not "
                                  "supported; supported: text conditioning alone")
        super().__init__(unet, scheduler)
        width = config.get("encoder_hid_dim") or config.get("cross_attention_dim")
        if not isinstance(width, int):
            raise CheckpointError(f"UNet2DConditionModel cross_attention_dim {width!r} is not "
                                  "supported; supported: one integer for every block")
        self.label_dim = width

    def _labels(self, labels: Tensor | None, batch: int) -> Tensor:
        if labels is None or labels.ndim != 3 or labels.shape[0] != batch \
                or labels.shape[2] != self.label_dim:
            got = "none" if labels is None else f"shape {tuple(labels.shape)}"
            raise ValueError(f"this denoiser is text-conditional: pass the text encoder's token "
                             f"states (B={batch}, L, {self.label_dim}), got {got}")
        return labels

    def _network(self, x: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        out = self.unet(x.to(self.unet.dtype), t, encoder_hidden_states=labels.to(self.unet.dtype),
                        return_dict=False)[0]
        return out[:, : self.img_channels] if self.split_variance else out


# -- reading a pipeline folder -------------------------------------------------------------------

def _safetensors_weights(directory: Path, names: tuple[str, ...]) -> Path:
    """The first of ``names`` in ``directory``; a CheckpointError naming the pickle if only pickled
    weights are there, or saying that none are."""
    for name in names:
        if (directory / name).is_file():
            return directory / name
    pickles = sorted(p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(f"{pickles[0]}: pickled weights are refused (unpickling can run "
                              f"code); re-save the component with save_pretrained(..., "
                              f"safe_serialization=True) to get {names[0]}")
    raise CheckpointError(f"{directory}: no weights (expected {names[0]})")


def _component(folder: Path, index: dict[str, Any], name: str) -> Path | None:
    """The folder of component ``name`` after checking the class ``model_index.json`` declares;
    None for an absent optional ``vae``."""
    declared = index.get(name)
    library, cls = COMPONENTS[name]
    if declared is None or declared == [None, None]:
        if name == "vae":
            return None
        raise CheckpointError(f"{folder / PIPELINE_INDEX}: no {name!r} component (a "
                              f"text-to-image pipeline needs unet, scheduler, text_encoder and "
                              f"tokenizer)")
    allowed = TOKENIZER_CLASSES if name == "tokenizer" else (cls,)
    if not (isinstance(declared, list) and len(declared) == 2 and declared[1] in allowed):
        raise CheckpointError(f"{folder / PIPELINE_INDEX}: {name} is {declared!r}; supported: "
                              f"{library} {' or '.join(allowed)}")
    directory = folder / name
    if not directory.is_dir():
        raise CheckpointError(f"{folder}: model_index.json lists {name} but there is no {name}/ "
                              "folder")
    return directory


def _checked(info: dict[str, Any], what: Path) -> None:
    bad = {key: info.get(key) for key in ("missing_keys", "unexpected_keys", "mismatched_keys")
           if info.get(key)}
    if bad:
        raise CheckpointError(f"{what}: weights do not match the config: {bad}")


def _load_diffusers_model(cls: Any, directory: Path) -> tuple[nn.Module, Path]:
    weights = _safetensors_weights(directory, (SAFETENSORS_WEIGHTS, SAFETENSORS_INDEX))
    try:
        model, info = cls.from_pretrained(directory, local_files_only=True, use_safetensors=True,
                                          output_loading_info=True, low_cpu_mem_usage=False)
    except Exception as err:  # noqa: BLE001 - untrusted input through a third-party loader
        raise CheckpointError(f"{directory}: cannot load the {cls.__name__}: {err}") from None
    _checked(info, weights)
    return model.eval(), weights


def _load_text_encoder(directory: Path) -> tuple[nn.Module, Path]:
    transformers = _require_transformers()
    weights = _safetensors_weights(directory, TRANSFORMERS_WEIGHTS)
    config = read_json_object(directory / "config.json") if (directory / "config.json").is_file() \
        else {}
    if config.get("model_type") != "clip_text_model":
        raise CheckpointError(f"{directory}/config.json: expected a CLIPTextModel config "
                              f"(model_type 'clip_text_model'), found {config.get('model_type')!r}")
    try:
        model, info = transformers.CLIPTextModel.from_pretrained(
            directory, local_files_only=True, use_safetensors=True, output_loading_info=True)
    except Exception as err:  # noqa: BLE001 - untrusted input through a third-party loader
        raise CheckpointError(f"{directory}: cannot load the CLIPTextModel: {err}") from None
    _checked(info, weights)
    return model.eval(), weights


def _load_tokenizer(directory: str | Path) -> Any:
    try:
        return _require_transformers().CLIPTokenizer.from_pretrained(directory,
                                                                     local_files_only=True)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - untrusted input through a third-party loader
        raise CheckpointError(f"{directory}: cannot load the CLIPTokenizer: {err}") from None


def import_diffusers_text(folder: str | Path, out_dir: str | Path) -> Path:
    """Import a text-to-image pipeline folder (``save_pretrained`` layout) into ``out_dir``.

    ``out_dir`` gets ``model.safetensors`` (the :class:`DiffusersTextDenoiser`),
    ``text_encoder.safetensors``, ``tokenizer/``, ``vae.safetensors`` (latent models) and
    ``architecture.json``: format ``diffusers_text``, ``unet_config``, ``scheduler_class``,
    ``scheduler_config``, ``prediction_type``, ``schedule``, ``sigma_min``, ``sigma_max``,
    ``label_dim`` (``E``), ``img_resolution``, ``img_channels`` (of the samples: latents for a
    latent model), ``text_encoder_config``, ``vae_config`` and ``vae_scaling_factor`` (None
    without a VAE), ``sigma_data`` (1 for latents, None for pixels) and ``source`` (the folder
    and each component's weights file with its SHA-256).

    Raises:
        CheckpointError: a missing or malformed component, pickled weights, a class outside the
            allow-list, an unsupported scheduler or configuration, a text encoder whose width
            is not the U-Net's cross-attention width. Nothing is left in ``out_dir`` then.
    """
    diffusers = _require_diffusers()
    folder = Path(folder)
    if not (folder / PIPELINE_INDEX).is_file():
        raise CheckpointError(f"{folder}: no {PIPELINE_INDEX} (expected a text-to-image "
                              "pipeline saved by save_pretrained)")
    index = read_json_object(folder / PIPELINE_INDEX)
    sched_dir = folder / "scheduler"
    if not (sched_dir / SCHEDULER_CONFIG).is_file():
        raise CheckpointError(f"{sched_dir}: missing {SCHEDULER_CONFIG}")
    sched_name = str(read_json_object(sched_dir / SCHEDULER_CONFIG).get("_class_name"))
    try:
        scheduler = scheduler_class(sched_name).from_pretrained(sched_dir, local_files_only=True)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - untrusted input through a third-party loader
        raise CheckpointError(f"{sched_dir}: cannot load the {sched_name}: {err}") from None
    dirs = {name: _component(folder, index, name) for name in COMPONENTS}
    unet, unet_weights = _load_diffusers_model(diffusers.UNet2DConditionModel, dirs["unet"])
    text_encoder, text_weights = _load_text_encoder(dirs["text_encoder"])
    tokenizer = _load_tokenizer(dirs["tokenizer"])
    vae, vae_weights = (_load_diffusers_model(diffusers.AutoencoderKL, dirs["vae"])
                        if dirs["vae"] is not None else (None, None))
    try:
        network = DiffusersTextDenoiser(unet, scheduler)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - a config value of the wrong type or range
        raise CheckpointError(f"{folder}: unsupported configuration: {err}") from None
    if text_encoder.config.hidden_size != network.label_dim:
        raise CheckpointError(f"{folder}: the text encoder's hidden size "
                              f"{text_encoder.config.hidden_size} is not the U-Net's "
                              f"cross-attention width {network.label_dim}")
    if vae is not None and vae.config.latent_channels != network.img_channels:
        raise CheckpointError(f"{folder}: the VAE has {vae.config.latent_channels} latent "
                              f"channels, the U-Net takes {network.img_channels}")
    weights = {"unet": unet_weights, "text_encoder": text_weights, "vae": vae_weights}
    record = {
        "format": FORMAT,
        **denoiser_record(network, unet, sched_name, scheduler),
        "text_encoder_config": json.loads(text_encoder.config.to_json_string()),
        "vae_config": None if vae is None else _json_config(vae),
        "vae_scaling_factor": None if vae is None else float(vae.config.scaling_factor),
        "sigma_data": 1.0 if vae is not None else None,
        "source": {"path": str(folder.resolve()),
                   **{name: {"weights": str(path.relative_to(folder)),
                             "sha256": file_sha256(path)}
                      for name, path in weights.items() if path is not None}},
    }
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    written = [path for path in (out_dir / TEXT_ENCODER_FILE, out_dir / VAE_FILE,
                                 out_dir / TOKENIZER_DIR) if not path.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _save_state(text_encoder, out_dir / TEXT_ENCODER_FILE)
        if vae is not None:
            _save_state(vae, out_dir / VAE_FILE)
        tokenizer.save_pretrained(out_dir / TOKENIZER_DIR)
        return save_imported(out_dir, network, record)  # the record last: then it is complete
    except BaseException:
        for leftover in [*out_dir.glob("*.tmp"), *written]:
            if leftover.is_dir():
                for child in leftover.iterdir():
                    child.unlink()
                leftover.rmdir()
            else:
                leftover.unlink(missing_ok=True)
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise


def _save_state(module: nn.Module, path: Path) -> None:
    save_file({name: tensor.detach().contiguous().clone()
               for name, tensor in module.state_dict().items()}, str(path))


# -- loading an import back --------------------------------------------------------------------

def build(record: dict[str, Any]) -> DiffusersTextDenoiser:
    """The :class:`DiffusersTextDenoiser` of an import's record, freshly initialised
    (:func:`dibregman.pretrained.load_imported` loads the imported weights into it)."""
    return build_denoiser(record, DiffusersTextDenoiser)


def _imported_file(directory: str | Path, name: str) -> Path:
    path = Path(directory) / name
    if not path.exists():
        raise CheckpointError(f"{directory}: an incomplete {FORMAT} import, {name} is missing; "
                              "import the pipeline again")
    return path


def load_text_encoder(directory: str | Path, record: dict[str, Any]) -> tuple[Any, nn.Module]:
    """The tokenizer and the frozen CLIP text encoder an import wrote into ``directory``."""
    transformers = _require_transformers()
    weights = _imported_file(directory, TEXT_ENCODER_FILE)
    encoder = transformers.CLIPTextModel(
        transformers.CLIPTextConfig.from_dict(record["text_encoder_config"]))
    encoder.load_state_dict(load_file(str(weights)), strict=True)
    return (_load_tokenizer(_imported_file(directory, TOKENIZER_DIR)),
            encoder.eval().requires_grad_(False))


def load_vae(directory: str | Path, record: dict[str, Any]) -> nn.Module | None:
    """The frozen ``AutoencoderKL`` of a latent model's import; None for a pixel model."""
    if record.get("vae_config") is None:
        return None
    weights = _imported_file(directory, VAE_FILE)
    vae = _require_diffusers().AutoencoderKL.from_config(record["vae_config"])
    vae.load_state_dict(load_file(str(weights)), strict=True)
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_prompts(tokenizer: Any, encoder: nn.Module, prompts: list[str]) -> Tensor:
    """``(len(prompts), L, E)`` token states of ``prompts``, as the pipeline encodes them: padded
    to ``L = tokenizer.model_max_length`` (longer prompts truncated), the text encoder's last
    hidden states (with the attention mask only if its config asks for one), on its device."""
    device = next(encoder.parameters()).device
    tokens = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt")
    mask = tokens.attention_mask.to(device) \
        if getattr(encoder.config, "use_attention_mask", False) else None
    return encoder(tokens.input_ids.to(device), attention_mask=mask)[0]


@torch.no_grad()
def decode(vae: nn.Module | None, scaling_factor: float | None, samples: Tensor,
           batch_size: int = 64) -> Tensor:
    """Images in ``[-1, 1]`` of ``samples: (N, C, h, w)``: ``Dec(z / s)`` for a latent model,
    the samples themselves (clamped) for a pixel model; float32 on the samples' device."""
    if vae is None:
        return samples.float().clamp(-1, 1)
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    return torch.cat([
        vae.decode((chunk.to(device, dtype) / scaling_factor), return_dict=False)[0].float()
        for chunk in samples.split(batch_size)]).clamp(-1, 1).to(samples.device)


@torch.no_grad()
def encode_images(vae: nn.Module, scaling_factor: float, images: Tensor,
                  batch_size: int = 64) -> Tensor:
    """Latents ``s * mean(Enc(images))`` of images ``(N, 3, H, W)`` in ``[-1, 1]`` (the
    posterior mean: a deterministic data set), float32 on the images' device."""
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    return torch.cat([
        vae.encode(chunk.to(device, dtype), return_dict=False)[0].mean.float() * scaling_factor
        for chunk in images.split(batch_size)]).to(images.device)


# -- a tiny pipeline of the same layout, for tests and probes -----------------------------------

TINY_LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]


def save_tiny_pipeline(path: str | Path, prediction_type: str = "epsilon", vae: bool = False,
                       scheduler: str = "DDPMScheduler", seed: int = 0,
                       max_length: int = 16) -> Path:
    """Write a random-initialised text-to-image pipeline in Stable Diffusion's layout to
    ``path`` (safetensors, ``model_index.json``); returns ``path``.

    A ``UNet2DConditionModel`` of widths (32, 64), one cross-attention level, cross-attention
    width 32 and samples ``(4, 8, 8)``; a 2-layer ``CLIPTextModel`` of width 32; a
    ``CLIPTokenizer`` whose vocabulary is single letters and digits (no merges) padding to
    ``max_length`` tokens; a 1000-step scaled-linear VP ``scheduler`` (SD's betas) predicting
    ``prediction_type``; with ``vae``, an ``AutoencoderKL`` from ``(3, 16, 16)`` images to
    ``(4, 8, 8)`` latents. Seconds on a CPU.
    """
    diffusers, transformers = _require_diffusers(), _require_transformers()
    path = Path(path)
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=8)
    # clip_sample off: clipping x0 is a sampler device, not part of the denoiser.
    sched = scheduler_class(scheduler)(num_train_timesteps=1000, beta_start=0.00085,
                                       beta_end=0.012, beta_schedule="scaled_linear",
                                       prediction_type=prediction_type,
                                       **({"clip_sample": False}
                                          if scheduler == "DDPMScheduler" else {}))
    tokens = ["<|startoftext|>", "<|endoftext|>", *TINY_LETTERS,
              *(f"{letter}</w>" for letter in TINY_LETTERS)]
    vocab = {token: i for i, token in enumerate(tokens)}
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=max_length, bos_token_id=0,
        eos_token_id=1, pad_token_id=1))
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "vocab.json").write_text(json.dumps(vocab))
        (Path(scratch) / "merges.txt").write_text("#version: 0.2\n")
        (Path(scratch) / "tokenizer_config.json").write_text(json.dumps(
            {"model_max_length": max_length, "tokenizer_class": "CLIPTokenizer"}))
        tokenizer = transformers.CLIPTokenizer.from_pretrained(scratch, local_files_only=True)
    index: dict[str, Any] = {"_class_name": "StableDiffusionPipeline",
                             "_diffusers_version": diffusers.__version__,
                             "scheduler": ["diffusers", scheduler]}
    parts: dict[str, Any] = {"unet": unet, "text_encoder": text_encoder, "tokenizer": tokenizer,
                             "scheduler": sched}
    if vae:
        parts["vae"] = diffusers.AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
            latent_channels=4, norm_num_groups=4, sample_size=16)
    for name, part in parts.items():
        if name != "scheduler":
            index[name] = list(COMPONENTS[name])
        kwargs = {} if name in ("tokenizer", "scheduler") else {"safe_serialization": True}
        part.save_pretrained(path / name, **kwargs)
    (path / PIPELINE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return path


# -- the architecture of Stable Diffusion 1.5, and FLOPs per forward pass -----------------------

# Stable Diffusion v1.5's architecture: the hyper-parameters of the unet/, scheduler/,
# text_encoder/ and vae/ configs of its diffusers folder (stable-diffusion-v1-5), in the keys of
# an import's record. No weights: what `bench sweep --dry-run --probe-steps N` counts the FLOPs
# of when the import itself is not on the machine (:func:`dibregman.probe.flop_probe`).
SD15_ARCHITECTURE: dict[str, Any] = {
    "format": FORMAT,
    "unet_config": {
        "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False, "cross_attention_dim": 768,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                             "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
        "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-5,
        "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                           "CrossAttnUpBlock2D"],
    },
    "scheduler_class": "PNDMScheduler",
    "scheduler_config": {"beta_start": 0.00085, "beta_end": 0.012,
                         "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
                         "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
                         "prediction_type": "epsilon"},
    "prediction_type": "epsilon",
    "label_dim": 768,
    "img_channels": 4,
    "img_resolution": 64,
    "text_encoder_config": {"hidden_size": 768, "intermediate_size": 3072,
                            "num_attention_heads": 12, "num_hidden_layers": 12,
                            "max_position_embeddings": 77, "vocab_size": 49408,
                            "hidden_act": "quick_gelu", "projection_dim": 768},
    "vae_config": {"in_channels": 3, "out_channels": 3, "latent_channels": 4,
                   "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
                   "down_block_types": ["DownEncoderBlock2D"] * 4,
                   "up_block_types": ["UpDecoderBlock2D"] * 4, "norm_num_groups": 32,
                   "sample_size": 512, "scaling_factor": 0.18215},
    "vae_scaling_factor": 0.18215,
    "sigma_data": 1.0,
}


def forward_flops(record: dict[str, Any]) -> dict[str, float]:
    """FLOPs of one forward pass per sample of a record's networks, counted by
    ``torch.utils.flop_counter.FlopCounterMode`` on the meta device (shapes only: no memory,
    no arithmetic): ``unet`` on a ``(1, C, S, S)`` sample with ``L``-token states and ``text``,
    the text encoder on one prompt of ``L`` tokens, ``L`` = its ``max_position_embeddings``
    (the length the pipeline pads every prompt to, for Stable Diffusion)."""
    from torch.utils.flop_counter import FlopCounterMode

    diffusers, transformers = _require_diffusers(), _require_transformers()
    config = record["unet_config"]
    text_config = transformers.CLIPTextConfig.from_dict(record["text_encoder_config"])
    tokens, size = text_config.max_position_embeddings, config["sample_size"]
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel.from_config(config)
        encoder = transformers.CLIPTextModel(text_config)
        sample = torch.empty(1, config["in_channels"], size, size)
        states = torch.empty(1, tokens, text_config.hidden_size)
        ids = torch.zeros(1, tokens, dtype=torch.long)
    counts = {}
    for name, run in (("unet", lambda: unet(sample, torch.ones(1, device="meta"),
                                            encoder_hidden_states=states)),
                      ("text", lambda: encoder(ids))):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            run()
        counts[name] = float(counter.get_total_flops())
    return counts
