"""Captions of digits and a tiny CLIP: the text side of the ``text_digits`` teacher.

The CPU-sized text-to-image task captions each digit image by prompts built from templates
(:data:`TEMPLATES`: ``"three"``, ``"3"``, ``"a handwritten three"``, ...), so a prompt names
one digit. A prompt set is the list of the teacher's conditions; prompt ``k`` of the template
set is template ``k // 10`` of digit ``k mod 10``, so evaluation sample ``i`` (prompt
``i mod C``) draws digit ``i mod 10``.

Text is encoded as Stable Diffusion encodes it: by the text tower of a CLIP (Radford et al.
2021, arXiv 2103.00020) trained first and frozen. :class:`TinyClip` is such a pair of towers at
toy scale: a bag of words (mean of learned word vectors; the empty prompt ``""`` has a learned
vector of its own, the null condition of classifier-free guidance) through an MLP, and a small
CNN, both to ``E``-dimensional unit vectors. It is trained contrastively on (image, caption)
pairs with the targets of supervised contrastive learning (every caption of the image's digit
is a positive): with ``s = exp(logit_scale)`` and ``L = s * I T^T`` for a batch of unit
embeddings ``I, T: (B, E)`` and ``P_ij = [d_i = d_j] / #{j : d_j = d_i}``,
``loss = (CE(L, P) + CE(L^T, P)) / 2``.

Two CLIPs are trained on the same data with other seeds and widths: the teacher's text encoder,
and the evaluation CLIP of the CLIP score (``100 max(cos(I, T), 0)``, Hessel et al. 2021,
arXiv 2104.08718), so the score is not read off the network the teacher was conditioned on.
Both are cached by content under ``<cache>/text``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dibregman.cache import cache_root

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = ("{word}", "{numeral}", "a handwritten {word}", "the digit {numeral}",
             "a picture of the number {word}")
# bump when the architecture or the training procedure changes: it is part of the cache key
_CLIP_VERSION = "tiny-clip-v1"


class PromptError(ValueError):
    """A prompt set that cannot be read or names no digit; the message says which and why."""


@dataclass(frozen=True)
class PromptSet:
    """Prompts and the digit each names.

    Attributes:
        prompts: ``C`` prompts, the teacher's conditions.
        digits: ``(C,)`` int64, the digit prompt ``k`` names.
    """

    prompts: tuple[str, ...]
    digits: Tensor

    def __len__(self) -> int:
        return len(self.prompts)


def template_prompts() -> PromptSet:
    """The 50 template captions, template-major: prompt ``k`` = template ``k // 10`` of digit
    ``k mod 10``."""
    prompts = tuple(t.format(word=DIGIT_WORDS[d], numeral=d) for t in TEMPLATES
                    for d in range(10))
    return PromptSet(prompts, torch.arange(len(prompts)) % 10)


def vocabulary() -> tuple[str, ...]:
    """Every word the templates use, sorted: the tiny text encoder's vocabulary."""
    return tuple(sorted({w for p in template_prompts().prompts for w in tokenize(p)}))


def tokenize(prompt: str) -> list[str]:
    """Lower-case words and numerals of ``prompt`` (punctuation dropped)."""
    return re.findall(r"[a-z]+|[0-9]", prompt.lower())


def named_digit(prompt: str) -> int:
    """The one digit ``prompt`` names (as a word or a numeral).

    Raises:
        PromptError: it names none or several.
    """
    words = tokenize(prompt)
    named = {DIGIT_WORDS.index(w) if w in DIGIT_WORDS else int(w) for w in words
             if w in DIGIT_WORDS or w.isdigit()}
    if len(named) != 1:
        raise PromptError(f"prompt {prompt!r} names {len(named)} digits; each prompt of a "
                          f"digits prompt set must name exactly one (0-9, or zero ... nine)")
    return named.pop()


def load_prompts(spec: str) -> PromptSet:
    """The prompt set ``text.prompts`` names: ``templates`` or ``file:PATH`` (one prompt per
    non-empty line, each naming one digit in the words of :func:`vocabulary`).

    Raises:
        PromptError: an unknown spec, a missing or empty file, a prompt naming no single digit
            or using a word outside the vocabulary.
    """
    if spec == "templates":
        return template_prompts()
    if not spec.startswith("file:"):
        raise PromptError(f"text.prompts {spec!r}: the text_digits teacher reads 'templates' "
                          f"or 'file:PATH' (one prompt per line)")
    path = Path(spec.removeprefix("file:")).expanduser()
    if not path.is_file():
        raise PromptError(f"text.prompts: no prompt file {path}")
    prompts = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not prompts:
        raise PromptError(f"text.prompts: {path} holds no prompt")
    known = set(vocabulary())
    for prompt in prompts:
        unknown = sorted(set(tokenize(prompt)) - known)
        if unknown:
            raise PromptError(f"prompt {prompt!r} uses words the tiny text encoder does not "
                              f"know: {', '.join(unknown)}; its vocabulary: "
                              f"{' '.join(vocabulary())}")
    return PromptSet(prompts, torch.tensor([named_digit(p) for p in prompts]))


class TextTower(nn.Module):
    """Prompts -> ``(B, E)`` unit vectors: the mean of learned word vectors (the empty prompt:
    a learned null vector) through a two-layer MLP."""

    def __init__(self, vocab: tuple[str, ...], embed_dim: int, width: int = 64) -> None:
        super().__init__()
        self.index = {word: i for i, word in enumerate(vocab)}
        self.words = nn.EmbeddingBag(len(vocab), width, mode="mean")
        self.null = nn.Parameter(torch.zeros(width))
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, embed_dim))

    def forward(self, prompts: list[str] | tuple[str, ...]) -> Tensor:
        device = self.null.device
        ids, offsets = [], []
        for prompt in prompts:
            offsets.append(len(ids))
            ids += [self.index[w] for w in tokenize(prompt)]
        bags = self.words(torch.tensor(ids, dtype=torch.long, device=device),
                          torch.tensor(offsets, dtype=torch.long, device=device))
        empty = torch.tensor([not tokenize(p) for p in prompts], device=device)
        bags = torch.where(empty[:, None], self.null.expand_as(bags), bags)
        return F.normalize(self.mlp(bags), dim=-1)


class ImageTower(nn.Module):
    """``(B, C, H, W)`` images in [-1, 1] -> ``(B, E)`` unit vectors: three 3x3 conv blocks (the
    last two with stride 2), global average pooling, a linear head."""

    def __init__(self, channels: int, embed_dim: int, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.SiLU())
        self.head = nn.Linear(2 * width, embed_dim)

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(self.head(self.net(images).mean(dim=(2, 3))), dim=-1)


class TinyClip(nn.Module):
    """A text tower and an image tower into one ``E``-dimensional space, and a learned
    temperature ``logit_scale`` (CLIP's initial ``log(1 / 0.07)``)."""

    def __init__(self, channels: int, embed_dim: int, width: int = 64) -> None:
        super().__init__()
        self.text = TextTower(vocabulary(), embed_dim, width)
        self.image = ImageTower(channels, embed_dim, width // 2)
        self.logit_scale = nn.Parameter(torch.tensor(2.6593))

    @torch.no_grad()
    def score(self, images: Tensor, prompts: list[str] | tuple[str, ...]) -> Tensor:
        """CLIP score of each pair: ``100 max(cos(I_i, T_i), 0)``, ``(B,)`` for ``images: (B, C,
        H, W)`` in [-1, 1] (clamped) and ``B`` prompts."""
        cos = (self.image(images.clamp(-1, 1)) * self.text(prompts)).sum(dim=-1)
        return 100 * cos.clamp(min=0)


def train_clip(images: Tensor, digits: Tensor, prompts: PromptSet, embed_dim: int, steps: int,
               seed: int, width: int = 64, batch_size: int = 256, lr: float = 2e-3) -> TinyClip:
    """A :class:`TinyClip` fitted to ``images: (N, C, H, W)`` of ``digits: (N,)``, each image
    paired with a random prompt of its digit from ``prompts`` at every step (the supervised
    contrastive loss of the module docstring; AdamW, cosine decay). Deterministic in ``seed``.

    Raises:
        PromptError: a digit of the data that no prompt names.
    """
    missing = sorted(set(digits.tolist()) - set(prompts.digits.tolist()))
    if missing:
        raise PromptError(f"no prompt names digit(s) {missing}; every digit of the data needs "
                          f"a prompt to train the text encoder on")
    rng = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyClip(images.shape[1], embed_dim, width)
    by_digit = [torch.nonzero(prompts.digits == d).flatten() for d in range(10)]
    counts = torch.tensor([len(k) for k in by_digit])
    starts, flat = torch.cumsum(counts, 0) - counts, torch.cat(by_digit)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    for _ in range(steps):
        index = torch.randint(len(images), (batch_size,), generator=rng)
        d = digits[index]
        choice = flat[starts[d] + (torch.rand(batch_size, generator=rng) * counts[d]).long()]
        texts = model.text(prompts.prompts)[choice]  # every prompt once, then the batch's
        logits = model.logit_scale.exp() * model.image(images[index]) @ texts.T
        same = (d[:, None] == d[None, :]).float()
        targets = same / same.sum(dim=1, keepdim=True)
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
    return model.eval().requires_grad_(False)


def cached_clip(images: Tensor, digits: Tensor, prompts: PromptSet, embed_dim: int, steps: int,
                seed: int, width: int = 64) -> TinyClip:
    """:func:`train_clip`, its weights cached under ``<cache>/text`` by a hash of the data, the
    prompts and every setting (a file written whole, then renamed into place)."""
    key = hashlib.sha256(json.dumps(
        [_CLIP_VERSION, prompts.prompts, embed_dim, steps, seed, width]).encode())
    key.update(images.contiguous().numpy().tobytes())
    key.update(digits.contiguous().numpy().tobytes())
    path = cache_root() / "text" / f"clip-{key.hexdigest()[:16]}.pt"
    if path.exists():
        model = TinyClip(images.shape[1], embed_dim, width)
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval().requires_grad_(False)
    model = train_clip(images, digits, prompts, embed_dim, steps, seed, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model
