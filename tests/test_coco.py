"""The COCO-2014 zero-shot protocol (dibregman.coco, `bench coco`) on a tiny fake COCO layout
written here: the caption draw (distinct images, seed-stable), the real images' crop and
resize, finite FID and CLIP numbers, resuming, and one-line exit-2 errors for missing data.

The fast tests take FID features from a fixed random projection of the pixels (a 2048-d
Inception Fréchet distance costs about a minute of CPU); the slow test runs `bench coco` end to
end with clean-fid's Inception on a tiny distilled text-to-image pipeline.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("transformers")

from bench.cli import app  # noqa: E402
from dibregman.coco import (  # noqa: E402
    ANNOTATIONS_FILE,
    IMAGES_DIR,
    RESULT_FILE,
    SCORES_FILE,
    STATE_FILE,
    coco_protocol,
    load_real,
    select_captions,
)
from dibregman.metrics.clip import ClipScorer, save_tiny_clip  # noqa: E402

SIZE = 16  # the trivial generator's resolution
PROJECTION = torch.randn(3 * SIZE * SIZE, 6, generator=torch.Generator().manual_seed(0),
                         dtype=torch.float64)


def pixels(images: torch.Tensor, device: str) -> torch.Tensor:
    """``(N, 6)`` float64 features: a fixed random projection of the pixels."""
    return images.flatten(1).double() @ PROJECTION


def generate(prompts: list[str], rng: torch.Generator) -> torch.Tensor:
    """A trivial generator: random ``(B, 3, 16, 16)`` images in [-1, 1] from ``rng``."""
    return torch.rand(len(prompts), 3, SIZE, SIZE, generator=rng) * 2 - 1


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    """10 captioned val2014 images of assorted sizes (image ``k`` has ``k % 3 + 1`` captions,
    ``"image k caption j"``), an uncaptioned image, and a caption of an image not listed."""
    root = tmp_path_factory.mktemp("coco")
    (root / IMAGES_DIR).mkdir()
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for k in range(11):
        name = f"COCO_val2014_{k:012d}.jpg"
        shape = (20 + 2 * k, 28 - k, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / IMAGES_DIR / name)
        images.append({"id": 100 + k, "file_name": name, "height": shape[0], "width": shape[1]})
        if k < 10:
            annotations += [{"id": 1000 + 10 * k + j, "image_id": 100 + k,
                             "caption": f" image {k} caption {j}\n"} for j in range(k % 3 + 1)]
    annotations.append({"id": 9999, "image_id": 555, "caption": "an image that is not listed"})
    (root / ANNOTATIONS_FILE).write_text(json.dumps({"images": images,
                                                    "annotations": annotations}))
    return root


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    return ClipScorer(save_tiny_clip(tmp_path_factory.mktemp("clip") / "clip"))


def test_captions_are_one_per_distinct_image_and_stable_per_seed(coco_dir):
    annotations = coco_dir / ANNOTATIONS_FILE
    pairs = select_captions(annotations, n=6, seed=3)
    ids = [pair.image_id for pair in pairs]
    assert len(set(ids)) == 6
    for pair in pairs:
        k = pair.image_id - 100
        assert 0 <= k < 10  # captioned and listed images only
        assert pair.file_name == f"COCO_val2014_{k:012d}.jpg"
        assert pair.caption.startswith(f"image {k} caption ") and pair.caption == \
            pair.caption.strip()
        assert int(pair.caption.rsplit(" ", 1)[1]) < k % 3 + 1
    assert select_captions(annotations, n=6, seed=3) == pairs
    assert select_captions(annotations, n=6, seed=4) != pairs
    every = select_captions(annotations, n=10, seed=0)
    assert sorted(pair.image_id for pair in every) == list(range(100, 110))
    # over seeds, every caption of a three-caption image is drawn
    drawn = {pair.caption for s in range(30) for pair in select_captions(annotations, 10, s)
             if pair.image_id == 102}
    assert drawn == {f"image 2 caption {j}" for j in range(3)}
    with pytest.raises(ValueError, match=r"need 2 <= n <= 10"):
        select_captions(annotations, n=11)


def test_real_images_are_centre_cropped_and_resized_clean(coco_dir, tmp_path):
    # left half black, right half white, 20 high x 40 wide: the square centre crop is half each
    Image.fromarray(np.concatenate([np.zeros((20, 20, 3), np.uint8),
                                    np.full((20, 20, 3), 255, np.uint8)], axis=1)).save(
        tmp_path / "halves.png")
    image = load_real(tmp_path / "halves.png", 8, 8)
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1
    torch.testing.assert_close(image[:, :, :3], torch.full((3, 8, 3), -1.0))
    torch.testing.assert_close(image[:, :, 5:], torch.full((3, 8, 3), 1.0))
    wide = load_real(coco_dir / IMAGES_DIR / "COCO_val2014_000000000000.jpg", 8, 12)
    assert wide.shape == (3, 8, 12)


def test_protocol_gives_finite_fid_and_clip_scores_and_resumes(coco_dir, scorer, tmp_path):
    calls = []
    result = coco_protocol(generate, coco_dir, scorer, tmp_path / "whole", n=7, seed=1,
                           batch_size=3, features=pixels,
                           on_chunk=lambda done, n: calls.append((done, n)))
    assert calls == [(3, 7), (6, 7), (7, 7)]
    assert np.isfinite(result["fid"]) and result["fid"] > 0
    assert 0 <= result["clip_score"] <= 100
    assert (result["n"], result["seed"], result["height"], result["width"]) == (7, 1, SIZE, SIZE)
    scores = torch.load(tmp_path / "whole" / SCORES_FILE, weights_only=True)
    assert scores.shape == (7,) and float(scores.mean()) == pytest.approx(result["clip_score"])
    assert json.loads((tmp_path / "whole" / RESULT_FILE).read_text()) == result
    assert not (tmp_path / "whole" / STATE_FILE).exists()

    # Interrupted after its first chunk, then resumed: the uninterrupted numbers.
    def stop(done: int, n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        coco_protocol(generate, coco_dir, scorer, tmp_path / "cut", n=7, seed=1, batch_size=3,
                      features=pixels, on_chunk=stop)
    assert (tmp_path / "cut" / STATE_FILE).exists()
    resumed = []
    again = coco_protocol(generate, coco_dir, scorer, tmp_path / "cut", n=7, seed=1,
                          batch_size=3, features=pixels,
                          on_chunk=lambda done, n: resumed.append(done))
    assert resumed == [6, 7]
    assert again["fid"] == pytest.approx(result["fid"], rel=1e-9)
    assert again["clip_score"] == pytest.approx(result["clip_score"], rel=1e-9)
    # another seed draws other pairs and latents
    other = coco_protocol(generate, coco_dir, scorer, tmp_path / "other", n=7, seed=2,
                          batch_size=3, features=pixels)
    assert other["fid"] != pytest.approx(result["fid"], rel=1e-6)


def test_mismatched_settings_and_bad_images_are_refused(coco_dir, scorer, tmp_path):
    def stop(done: int, n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        coco_protocol(generate, coco_dir, scorer, tmp_path / "run", n=6, batch_size=3,
                      features=pixels, on_chunk=stop)
    with pytest.raises(ValueError, match="rerun with those or delete"):
        coco_protocol(generate, coco_dir, scorer, tmp_path / "run", n=6, batch_size=2,
                      features=pixels)
    with pytest.raises(ValueError, match=r"generate gave \(2, 3, 16\) for 2 prompts"):
        coco_protocol(lambda prompts, rng: torch.zeros(len(prompts), 3, 16), coco_dir, scorer,
                      tmp_path / "flat", n=2, features=pixels)


def bench_coco(*args: str):
    return CliRunner().invoke(app, ["coco", *args])


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_missing_data_fails_with_one_line_naming_the_file(coco_dir, scorer, tmp_path):
    clip = str(scorer.folder)
    no_annotations = tmp_path / "empty"
    (no_annotations / IMAGES_DIR).mkdir(parents=True)
    line = one_line_error(bench_coco(str(tmp_path), "--coco-dir", str(no_annotations),
                                     "--clip-model", clip, "--n", "4"))
    assert "captions_val2014.json is missing" in line
    no_images = tmp_path / "no-images"
    (no_images / "annotations").mkdir(parents=True)
    (no_images / ANNOTATIONS_FILE).write_text("{}")
    line = one_line_error(bench_coco(str(tmp_path), "--coco-dir", str(no_images),
                                     "--clip-model", clip))
    assert f"{IMAGES_DIR} is missing" in line
    line = one_line_error(bench_coco(str(tmp_path), "--coco-dir", str(coco_dir),
                                     "--clip-model", str(tmp_path / "no-clip")))
    assert "CLIP model folder" in line and "does not exist" in line
    line = one_line_error(bench_coco(str(tmp_path / "no-run"), "--coco-dir", str(coco_dir)))
    assert "is not a run directory" in line


@pytest.mark.slow
def test_bench_coco_measures_a_distilled_tiny_pipeline_end_to_end(coco_dir, scorer, tmp_path):
    """A tiny SD-layout pipeline, imported and distilled for two student steps; `bench coco`
    on 4 captions with clean-fid's Inception and the tiny CLIP."""
    from dibregman.config import with_overrides
    from dibregman.presets import get_preset
    from dibregman.pretrained.diffusers_text import import_diffusers_text, save_tiny_pipeline
    from dibregman.run import run_experiment

    teacher = import_diffusers_text(save_tiny_pipeline(tmp_path / "pipeline", vae=True),
                                    tmp_path / "teacher")
    (tmp_path / "prompts.txt").write_text("a red cat\ntwo dogs\n")
    cfg = with_overrides(get_preset("digits-tiny"), {
        "teacher": "pretrained_text", "image_teacher.path": str(teacher),
        "image_teacher.sampler_steps": 2, "text.prompts": f"file:{tmp_path / 'prompts.txt'}",
        "ratio.teacher_side": "teacher", "train.generator_steps": 2, "train.batch_size": 4,
        "train.fake_warmup_steps": 0, "train.sigma_min": 0.03, "train.sigma_max": 14.0,
        "train.sigma_init": 14.0, "text.clip_model": str(scorer.folder)})
    run_dir = tmp_path / "run"
    run_experiment(cfg, run_dir)
    result = bench_coco(str(run_dir), "--coco-dir", str(coco_dir), "--n", "4",
                        "--batch-size", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    saved = json.loads((run_dir / "coco" / RESULT_FILE).read_text())
    assert np.isfinite(saved["fid"]) and 0 <= saved["clip_score"] <= 100
    assert (saved["height"], saved["width"]) == (16, 16)
    assert "clip_score" in result.output
