"""The COCO-2014 zero-shot text-to-image protocol: FID and CLIP score on 30,000 val2014 captions.

The protocol of GigaGAN (Kang et al. 2023, §4) that DMD2 (Yin et al. 2024, §5.2) and the
one-step text-to-image distillation papers after it report: 30,000 images of the MS-COCO 2014
validation split drawn at random, one of each image's (about five) captions drawn at random;
one student image per caption (zero-shot: the student never saw COCO); FID between the
generated images and the drawn real images, and the CLIP score of each image with its caption.

Here, for ``n`` pairs and a protocol ``seed``:

* *Captions* (:func:`select_captions`): the images of ``captions_val2014.json`` that have a
  caption, sorted by id; ``n`` of them drawn without replacement by
  ``numpy.random.default_rng(seed)`` (``choice``), then for each, in the drawn order, one of its
  captions (sorted by annotation id) drawn by the same generator. So every caption belongs to a
  distinct image, and the same ``(file, n, seed)`` gives the same pairs on every machine.
* *Real images*: each drawn image, RGB, centre-cropped to the generated images' aspect and
  resized to their resolution with clean-fid's "clean" resize (PIL bicubic in float32,
  clipped to [0, 255]; ``cleanfid.resize.make_resizer("PIL", False, "bicubic", size)``), as a
  reference set stored at the generated resolution would be.
* *FID*: clean-fid "clean"-mode Inception-v3 features (:func:`dibregman.fid.clean_inception`)
  of the generated and of the real images, the Fréchet distance of their Gaussians.
* *CLIP score*: :class:`dibregman.metrics.clip.ClipScorer` of each generated image and its
  caption (``100 * max(cos, 0)``), the mean reported, the per-pair scores kept.

The pairs are processed in chunks of ``batch_size``: generate, features of both sets, CLIP
scores, then the running moments, the scores and the number of pairs done are saved to
``OUT/state.pt``, so an interrupted evaluation resumes at its last chunk. Chunk ``k``'s latents
come from a generator seeded by ``(seed, k)``, so a resumed evaluation generates what an
uninterrupted one would. The result goes to ``OUT/coco.json`` and the per-pair CLIP scores to
``OUT/clip_scores.pt``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dibregman.fid import FeatureFn, RunningMoments, clean_inception
from dibregman.metrics import frechet_distance
from dibregman.metrics.clip import PromptScorer
from dibregman.run import CONFIG_FILE, write_json

ANNOTATIONS_FILE = "annotations/captions_val2014.json"
IMAGES_DIR = "val2014"
PAPER_PROMPTS = 30_000
STATE_FILE = "state.pt"
RESULT_FILE = "coco.json"
SCORES_FILE = "clip_scores.pt"

# generate(prompts, rng) -> (len(prompts), C, H, W) images in [-1, 1]; latents drawn from rng
Generate = Callable[[list[str], torch.Generator], Tensor]


class CocoUnavailable(ValueError):
    """The COCO-2014 files the protocol reads are missing (the message names the file)."""


@dataclass(frozen=True)
class CocoPair:
    """One drawn (image, caption) pair of COCO val2014."""

    image_id: int
    file_name: str
    caption: str


def coco_files(coco_dir: str | Path) -> tuple[Path, Path]:
    """``(annotations json, images folder)`` of a COCO-2014 folder laid out as the download
    unpacks: ``COCO_DIR/annotations/captions_val2014.json`` and ``COCO_DIR/val2014/``.

    Raises:
        CocoUnavailable: either is missing (named in the message, with where to get it).
    """
    coco_dir = Path(coco_dir)
    annotations, images = coco_dir / ANNOTATIONS_FILE, coco_dir / IMAGES_DIR
    if not annotations.is_file():
        raise CocoUnavailable(
            f"COCO captions not found: {annotations} is missing (from "
            f"http://images.cocodataset.org/annotations/annotations_trainval2014.zip)")
    if not images.is_dir():
        raise CocoUnavailable(f"COCO images not found: {images} is missing (from "
                              f"http://images.cocodataset.org/zips/val2014.zip)")
    return annotations, images


def select_captions(annotations: str | Path, n: int = PAPER_PROMPTS,
                    seed: int = 0) -> list[CocoPair]:
    """``n`` (image, caption) pairs of distinct images, drawn by ``seed`` (the module docstring
    gives the rule). Captions are stripped of surrounding white space.

    Raises:
        ValueError: ``n`` is below 2 or above the number of captioned images, or the file is
            not a COCO captions file.
    """
    try:
        data = json.loads(Path(annotations).read_text())
        files = {int(image["id"]): str(image["file_name"]) for image in data["images"]}
        captions: dict[int, list[tuple[int, str]]] = {}
        for ann in data["annotations"]:
            captions.setdefault(int(ann["image_id"]), []).append(
                (int(ann["id"]), str(ann["caption"]).strip()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{annotations} is not a COCO captions file "
                         f"({type(err).__name__}: {err})") from None
    ids = sorted(i for i in captions if i in files)
    if not 2 <= n <= len(ids):
        raise ValueError(f"need 2 <= n <= {len(ids)} (the captioned images of {annotations}), "
                         f"got n={n}")
    rng = np.random.default_rng(seed)
    pairs = []
    for index in rng.choice(len(ids), size=n, replace=False):
        image_id = ids[int(index)]
        options = sorted(captions[image_id])
        pairs.append(CocoPair(image_id, files[image_id],
                              options[int(rng.integers(len(options)))][1]))
    return pairs


def load_real(path: Path, height: int, width: int) -> Tensor:
    """``(3, height, width)`` float32 image in [-1, 1]: the RGB image at ``path``,
    centre-cropped to aspect ``width / height`` and resized by clean-fid's "clean" resize (PIL
    bicubic on float32 channels, clipped to [0, 255], not re-quantised)."""
    from cleanfid.resize import make_resizer
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    w, h = rgb.size
    crop_w, crop_h = min(w, round(h * width / height)), min(h, round(w * height / width))
    left, top = (w - crop_w) // 2, (h - crop_h) // 2
    array = np.asarray(rgb.crop((left, top, left + crop_w, top + crop_h)))
    resized = make_resizer("PIL", False, "bicubic", (width, height))(array)
    return torch.from_numpy(resized.transpose(2, 0, 1).copy()) / 127.5 - 1.0


def _chunk_rng(seed: int, chunk: int) -> torch.Generator:
    """The latent generator of chunk ``chunk`` under protocol seed ``seed``."""
    state = np.random.SeedSequence([seed, chunk]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def coco_protocol(
    generate: Generate,
    coco_dir: str | Path,
    scorer: PromptScorer,
    out_dir: str | Path,
    n: int = PAPER_PROMPTS,
    seed: int = 0,
    batch_size: int = 100,
    device: str = "cpu",
    features: FeatureFn = clean_inception,
    on_chunk: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """FID and CLIP score of ``generate`` on ``n`` COCO-2014 val captions; resumable.

    Args:
        generate: ``generate(prompts, rng)`` -> ``(len(prompts), C, H, W)`` images in [-1, 1]
            (the same ``H x W`` for every chunk), latents drawn from ``rng``.
        coco_dir: a folder with ``annotations/captions_val2014.json`` and ``val2014/``.
        scorer: the CLIP scorer (:class:`dibregman.metrics.clip.ClipScorer`).
        out_dir: where the state, the result and the per-pair scores are written.
        n: caption-image pairs (the papers: 30,000).
        seed: the protocol seed: which pairs, and the latents.
        batch_size: pairs per chunk (one generation, one save).
        device: where the feature network runs.
        features: the FID feature extractor; clean-fid Inception by default.
        on_chunk: ``on_chunk(done, n)`` after every chunk (progress).

    Returns:
        ``{"fid", "clip_score" (mean), "clip_score_std" (of the pairs), "n", "seed",
        "height", "width"}``; also written to ``OUT/coco.json``.

    Raises:
        CocoUnavailable: the COCO files are missing.
        ValueError: bad arguments, a state or result of other settings in ``out_dir``, or
            generated images of the wrong shape.
        OSError: a drawn real image cannot be read.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    annotations, images_dir = coco_files(coco_dir)
    pairs = select_captions(annotations, n, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"n": n, "seed": seed, "batch_size": batch_size}
    state_path, result_path = out / STATE_FILE, out / RESULT_FILE
    if result_path.exists():
        result = json.loads(result_path.read_text())
        if all(result.get(key) == settings[key] for key in ("n", "seed")):
            return result
        raise ValueError(f"{result_path} holds a protocol with n={result.get('n')}, "
                         f"seed={result.get('seed')}; delete {out} to start again")
    state = torch.load(state_path, weights_only=True) if state_path.exists() else None
    if state is not None and state["settings"] != settings:
        raise ValueError(f"{state_path} is an evaluation with {state['settings']}, not "
                         f"{settings}; rerun with those or delete {out} to start again")
    done, size = 0, None
    fake, real, scores = None, None, torch.empty(0, dtype=torch.float64)
    if state is not None:
        done, size, scores = state["done"], tuple(state["size"]), state["scores"]
        fake, real = RunningMoments(1), RunningMoments(1)
        fake.load_state_dict(state["fake"])
        real.load_state_dict(state["real"])
    while done < n:
        chunk = pairs[done:done + batch_size]
        prompts = [pair.caption for pair in chunk]
        with torch.no_grad():
            generated = generate(prompts, _chunk_rng(seed, done // batch_size))
        generated = generated.detach().float().cpu()
        if generated.ndim != 4 or generated.shape[0] != len(chunk) or \
                generated.shape[1] not in (1, 3):
            raise ValueError(f"generate gave {tuple(generated.shape)} for {len(chunk)} prompts; "
                             f"need ({len(chunk)}, 1 or 3, H, W)")
        size = size or tuple(generated.shape[2:])
        if tuple(generated.shape[2:]) != size:
            raise ValueError(f"generate changed resolution: {tuple(generated.shape[2:])} after "
                             f"{size}")
        generated = generated.clamp(-1, 1)
        reals = torch.stack([load_real(images_dir / pair.file_name, *size) for pair in chunk])
        fake_features, real_features = features(generated, device), features(reals, device)
        fake = fake if fake is not None else RunningMoments(fake_features.shape[1])
        real = real if real is not None else RunningMoments(real_features.shape[1])
        fake.add(fake_features)
        real.add(real_features)
        scores = torch.cat([scores, scorer.score(generated, prompts).to(torch.float64)])
        done += len(chunk)
        tmp = state_path.with_name(state_path.name + ".tmp")
        torch.save({"settings": settings, "done": done, "size": list(size), "scores": scores,
                    "fake": fake.state_dict(), "real": real.state_dict()}, tmp)
        os.replace(tmp, state_path)
        if on_chunk is not None:
            on_chunk(done, n)
    result = {"fid": frechet_distance(*fake.moments(), *real.moments()),
              "clip_score": float(scores.mean()), "clip_score_std": float(scores.std()),
              "n": n, "seed": seed, "height": size[0], "width": size[1]}
    tmp = out / (SCORES_FILE + ".tmp")
    torch.save(scores, tmp)
    os.replace(tmp, out / SCORES_FILE)
    write_json(result_path, result)
    state_path.unlink()
    return result


def run_clip_model(run_dir: str | Path) -> str:
    """The ``text.clip_model`` of the run in ``run_dir`` ("" when unset).

    Raises:
        ValueError: ``run_dir`` has no run config.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a run directory (no {CONFIG_FILE})")
    return str(json.loads(path.read_text()).get("text", {}).get("clip_model", ""))


def student_generator(run_dir: str | Path, device: str = "cpu") -> Generate:
    """The one-step generator of a text-to-image run's EMA student.

    ``generate(prompts, rng)``: standard-normal latents ``(B, *shape)`` drawn from ``rng`` on the
    CPU, the prompts' token states from the teacher's text encoder (as the pipeline encodes
    them), one student evaluation ``G(z, c)``, and the teacher's decoding to images in [-1, 1]
    (the VAE's, for a latent model).

    Raises:
        ValueError: ``run_dir`` is not a run with a checkpoint, or its teacher cannot encode
            arbitrary prompts (only an imported text-to-image pipeline, ``pretrained_text``,
            can: the ``text_digits`` teacher's text tower knows its digit templates alone).
    """
    from dibregman.fid import _load_student
    from dibregman.pretrained.diffusers_text import encode_prompts
    from dibregman.teachers.text_pretrained import PretrainedTextTeacher

    student, teacher = _load_student(Path(run_dir), device)
    if not isinstance(teacher, PretrainedTextTeacher):
        raise ValueError(f"the COCO protocol needs a text-to-image teacher that encodes any "
                         f"prompt (teacher 'pretrained_text'); run {run_dir} distils a "
                         f"{type(teacher).__name__}")

    def generate(prompts: list[str], rng: torch.Generator) -> Tensor:
        latents = torch.randn(len(prompts), *teacher.shape, generator=rng).to(device)
        labels = encode_prompts(teacher.tokenizer, teacher.text_encoder, prompts)
        with torch.no_grad():
            return teacher.decode(student(latents, labels.to(device)).float()).cpu()

    return generate
