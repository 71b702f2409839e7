"""CLIP score of images and their prompts, offline, through transformers' ``CLIPModel``.

The CLIP score (Hessel et al. 2021, arXiv 2104.08718, in torchmetrics' convention) of an image
``x`` and its prompt ``c`` is

    CLIPScore(x, c) = 100 * max(cos(E_img(x), E_txt(c)), 0)

with ``E_img`` and ``E_txt`` CLIP's projected image and text embeddings
(``CLIPModel.get_image_features`` / ``get_text_features``); a set of pairs is summarised by the
mean. :class:`ClipScorer` returns the per-pair scores, so a report can put confidence intervals
on the mean.

The model is read from a local folder in transformers' ``save_pretrained`` layout (what
``huggingface-cli download openai/clip-vit-large-patch14 --local-dir DIR`` writes), with
``local_files_only=True``: nothing is downloaded, and only ``safetensors`` weights are loaded
(a folder holding only a pickled ``pytorch_model.bin`` is refused, as loading a pickle can run
code). Images are preprocessed by the folder's own CLIP image processor on its PIL backend, the
original CLIP preprocessing: bicubic resize of the shorter side, centre crop, ``/ 255``,
normalisation by the processor's mean and standard deviation. Prompts longer than the text
model's context (77 tokens for OpenAI's CLIPs) are truncated, as torchmetrics does.

transformers is an optional dependency (``pip install 'dibregman[diffusers]'``), imported only
inside the functions that need it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

CLIP_CONFIG_KEY = "text.clip_model"
DOWNLOAD_HINT = (
    "on a machine with internet, download a CLIP model with `huggingface-cli download "
    "openai/clip-vit-large-patch14 --include '*.json' '*.txt' '*.safetensors' --local-dir DIR` "
    f"and pass DIR as {CLIP_CONFIG_KEY} (`--set {CLIP_CONFIG_KEY}=DIR`, or `--clip-model DIR` "
    "of `bench coco`)"
)
# Each part of a CLIP folder and the file sets that provide it (any one set suffices).
_REQUIRED_FILES = {
    "model config": [("config.json",)],
    "tokenizer": [("tokenizer.json",), ("vocab.json", "merges.txt")],
    "image processor config": [("preprocessor_config.json",), ("processor_config.json",)],
}


class ClipUnavailable(ValueError):
    """The CLIP model folder is absent, incomplete, pickled-only, or transformers is missing."""


class PromptScorer(Protocol):
    """What measures how well images match their prompts, one score per pair."""

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """Per-pair scores ``(N,)`` float64 of images ``(N, C, H, W)`` in [-1, 1] and ``N``
        prompts."""
        ...


def check_clip_folder(folder: str | Path) -> Path:
    """``folder`` as a path, after checking it holds a CLIP model in transformers' layout
    with safetensors weights.

    Raises:
        ClipUnavailable: the folder is absent; lacks ``config.json``, the tokenizer's files
            (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``) or the image processor's
            (``preprocessor_config.json`` or ``processor_config.json``); or has no
            ``model.safetensors`` (nor a sharded ``model.safetensors.index.json``), naming the
            pickled ``.bin`` it holds instead if any. The message says how to get the weights.
    """
    path = Path(folder)
    if not str(folder):
        raise ClipUnavailable(f"no CLIP model folder given ({CLIP_CONFIG_KEY} is empty); "
                              f"{DOWNLOAD_HINT}")
    if not path.is_dir():
        raise ClipUnavailable(f"CLIP model folder {path} does not exist; {DOWNLOAD_HINT}")
    # transformers 5 builds an empty tokenizer, and a default image processor, when their files
    # are missing, and would score silently with them: each part's files are required here.
    for part, alternatives in _REQUIRED_FILES.items():
        if not any(all((path / name).is_file() for name in names) for names in alternatives):
            wanted = " or ".join(" + ".join(names) for names in alternatives)
            raise ClipUnavailable(f"CLIP model folder {path} is incomplete: no {part} "
                                  f"({wanted}); {DOWNLOAD_HINT}")
    if not any((path / name).is_file()
               for name in ("model.safetensors", "model.safetensors.index.json")):
        pickled = sorted(p.name for p in path.glob("*.bin"))
        held = (f"it holds only pickled weights ({', '.join(pickled)}), which are not loaded "
                f"(unpickling can run code)" if pickled else "it has no model.safetensors")
        raise ClipUnavailable(f"CLIP model folder {path} has no safetensors weights: {held}; "
                              f"{DOWNLOAD_HINT}")
    return path


@functools.cache
def _load(folder: str, device: str) -> tuple[object, object, object]:
    """(model, tokenizer, image processor) of a checked folder; one per (folder, device)."""
    try:
        from safetensors import SafetensorError
        from transformers import AutoTokenizer, CLIPModel
    except ImportError as err:
        raise ClipUnavailable(f"the CLIP score needs transformers ({err}); install it with: "
                              f"pip install 'dibregman[diffusers]'") from None
    try:  # transformers >= 5: the PIL backend of the CLIP image processor
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # transformers 4: CLIPImageProcessor is the PIL implementation
        from transformers import CLIPImageProcessor as ImageProcessor
    try:
        model = CLIPModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        processor = ImageProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, SafetensorError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClipUnavailable(f"CLIP model folder {folder} cannot be loaded ({first}); "
                              f"{DOWNLOAD_HINT}") from None
    model = model.to(device).eval().requires_grad_(False)
    return model, tokenizer, processor


def _pooled(output: Tensor | object) -> Tensor:
    """The projected embedding: transformers 5 returns a model output whose ``pooler_output``
    holds it, transformers 4 the tensor itself."""
    return output if isinstance(output, Tensor) else output.pooler_output


class ClipScorer:
    """CLIP score of (image, prompt) pairs with the CLIP model in a local folder.

    Args:
        folder: a folder in transformers' ``save_pretrained`` layout with ``config.json``,
            ``model.safetensors``, the tokenizer's and the image processor's files.
        device: where the model runs.
        batch_size: pairs per model call.

    Raises:
        ClipUnavailable: the folder is absent, incomplete or pickled-only, or transformers is
            not installed.
    """

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu",
                 batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.folder = check_clip_folder(folder)
        self.device = str(torch.device(device))
        self.batch_size = batch_size
        self.model, self.tokenizer, self.processor = _load(str(self.folder.resolve()),
                                                           self.device)

    @torch.no_grad()
    def embeddings(self, images: Tensor, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Projected CLIP embeddings ``(E_img (N, P), E_txt (N, P))`` float32 on the CPU of
        images ``(N, C, H, W)`` in [-1, 1] (``C`` in {1, 3}) and ``N`` prompts, unnormalised.

        Each image is quantised to uint8 (``(x + 1) * 127.5``, rounded, clamped), made a PIL
        RGB image and preprocessed by the folder's CLIP image processor; prompts are padded and
        truncated to the text model's context.
        """
        from PIL import Image

        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"need images (N, 1 or 3, H, W), got {tuple(images.shape)}")
        if len(prompts) != images.shape[0]:
            raise ValueError(f"need one prompt per image: {images.shape[0]} images, "
                             f"{len(prompts)} prompts")
        uint8 = ((images.detach().to("cpu", torch.float32) + 1.0) * 127.5).round().clamp(0, 255)
        uint8 = uint8.to(torch.uint8).expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous()
        uint8 = uint8.numpy()
        context = self.model.config.text_config.max_position_embeddings
        image_rows, text_rows = [], []
        for start in range(0, len(prompts), self.batch_size):
            stop = start + self.batch_size
            pil = [Image.fromarray(array) for array in uint8[start:stop]]
            pixels = self.processor(images=pil, return_tensors="pt")["pixel_values"]
            tokens = self.tokenizer(list(prompts[start:stop]), padding=True, truncation=True,
                                    max_length=context, return_tensors="pt")
            image_rows.append(_pooled(self.model.get_image_features(
                pixel_values=pixels.to(self.device))).float().cpu())
            text_rows.append(_pooled(self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device),
                attention_mask=tokens["attention_mask"].to(self.device))).float().cpu())
        if not image_rows:
            return torch.empty(0, 0), torch.empty(0, 0)
        return torch.cat(image_rows), torch.cat(text_rows)

    def score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """Per-pair CLIP scores ``100 * max(cos(E_img, E_txt), 0)``, ``(N,)`` float64 in
        [0, 100], of images ``(N, C, H, W)`` in [-1, 1] and their ``N`` prompts; the CLIP score
        of the set is their mean."""
        image_emb, text_emb = self.embeddings(images, prompts)
        if image_emb.shape[0] == 0:
            return torch.empty(0, dtype=torch.float64)
        cosine = torch.nn.functional.cosine_similarity(image_emb.double(), text_emb.double(),
                                                       dim=1)
        return 100.0 * cosine.clamp(min=0.0)


def clip_score(images: Tensor, prompts: Sequence[str], folder: str | Path,
               device: str | torch.device = "cpu") -> float:
    """Mean CLIP score of images ``(N, C, H, W)`` in [-1, 1] and their ``N`` prompts with the
    CLIP model in ``folder`` (:class:`ClipScorer`)."""
    return float(ClipScorer(folder, device).score(images, prompts).mean())


def save_tiny_clip(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny random-initialised CLIP in the layout :class:`ClipScorer` loads: for tests
    and benchmarks, never for a reported score.

    Text and vision towers of width 32, 2 layers, 2 heads; 32x32 images in 8x8 patches;
    16-d projections; a character-level BPE tokenizer (lower-case letters, no merges) with a
    16-token context; an image processor resizing the shorter side to 32 and centre-cropping
    32x32. Weights as ``model.safetensors``.

    Returns:
        ``folder``.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder = Path(folder)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {token: i for i, token in enumerate(
        [*letters, *(f"{c}</w>" for c in letters), "<|startoftext|>", "<|endoftext|>"])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**tower, "vocab_size": len(vocab), "max_position_embeddings": 16,
                     "bos_token_id": vocab["<|startoftext|>"],
                     "eos_token_id": vocab["<|endoftext|>"],
                     "pad_token_id": vocab["<|endoftext|>"]},
        vision_config={**tower, "image_size": 32, "patch_size": 8},
        projection_dim=16)
    with torch.random.fork_rng():  # the caller's global random stream is left as it was
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32},
                       crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
