"""The CLIP score (dibregman.metrics.clip) with a tiny random CLIP written to a temp folder:
the torchmetrics formula by hand, its range, order invariance, and clear errors for folders
that cannot give a score."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("transformers")

from dibregman.metrics.clip import ClipScorer, ClipUnavailable, clip_score, save_tiny_clip  # noqa: E402

PROMPTS = ["a cat on a mat", "two dogs", "a red car", "an empty room", "sky", "a tree"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def images(n: int, height: int = 40, width: int = 48, seed: int = 0) -> torch.Tensor:
    """``(n, 3, height, width)`` random images in [-1, 1] (not square: the processor resizes the
    shorter side and crops)."""
    return torch.rand(n, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def by_hand(folder, x: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """``100 * max(cos(E_img, E_txt), 0)`` with the original CLIP preprocessing written out:
    uint8, PIL bicubic resize of the shorter side to 32, centre crop 32x32, / 255, OpenAI's
    mean and std."""
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    rows = []
    for image in x:
        array = ((image + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
        pil = Image.fromarray(array.numpy())
        w, h = pil.size
        short = min(w, h)
        pil = pil.resize((round(w * 32 / short), round(h * 32 / short)), Image.BICUBIC)
        w, h = pil.size
        left, top = (w - 32) // 2, (h - 32) // 2
        pil = pil.crop((left, top, left + 32, top + 32))
        pixels = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255).permute(2, 0, 1)
        rows.append((pixels - mean) / std)
    tokens = tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        e_img = model.get_image_features(pixel_values=torch.stack(rows)).pooler_output
        e_txt = model.get_text_features(**tokens).pooler_output
    cos = (e_img * e_txt).sum(1) / (e_img.norm(dim=1) * e_txt.norm(dim=1))
    return 100 * cos.clamp(min=0).double()


def test_score_is_the_clip_score_formula_by_hand(tiny_clip):
    x = images(len(PROMPTS))
    scores = ClipScorer(tiny_clip, batch_size=4).score(x, PROMPTS)  # two batches
    assert scores.shape == (len(PROMPTS),) and scores.dtype == torch.float64
    torch.testing.assert_close(scores, by_hand(tiny_clip, x, PROMPTS), atol=1e-3, rtol=1e-4)
    assert clip_score(x, PROMPTS, tiny_clip) == pytest.approx(float(scores.mean()), abs=1e-4)


def test_scores_lie_in_0_100_and_follow_their_pairs_in_any_order(tiny_clip):
    x = images(len(PROMPTS), seed=1)
    scorer = ClipScorer(tiny_clip)
    scores = scorer.score(x, PROMPTS)
    assert torch.isfinite(scores).all()
    assert (scores >= 0).all() and (scores <= 100).all()
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    permuted = scorer.score(x[order], [PROMPTS[i] for i in order])
    torch.testing.assert_close(permuted, scores[order], atol=1e-4, rtol=1e-5)
    # a different pairing changes the scores: each score is of its own pair
    shifted = scorer.score(x, PROMPTS[1:] + PROMPTS[:1])
    assert (shifted - scores).abs().max() > 1e-3


def test_greyscale_images_score_as_their_rgb_copies(tiny_clip):
    grey = images(2, seed=2)[:, :1]
    scorer = ClipScorer(tiny_clip)
    torch.testing.assert_close(scorer.score(grey, PROMPTS[:2]),
                               scorer.score(grey.repeat(1, 3, 1, 1), PROMPTS[:2]))


def test_bad_input_is_refused(tiny_clip):
    scorer = ClipScorer(tiny_clip)
    with pytest.raises(ValueError, match="one prompt per image"):
        scorer.score(images(2), PROMPTS[:3])
    with pytest.raises(ValueError, match=r"need images \(N, 1 or 3, H, W\)"):
        scorer.score(torch.zeros(2, 4, 8, 8), PROMPTS[:2])


def test_missing_folder_says_how_to_get_the_weights(tmp_path):
    with pytest.raises(ClipUnavailable, match="does not exist") as info:
        ClipScorer(tmp_path / "nowhere")
    message = str(info.value)
    assert "huggingface-cli download openai/clip-vit-large-patch14" in message
    assert "text.clip_model" in message
    with pytest.raises(ClipUnavailable, match="text.clip_model is empty"):
        ClipScorer("")


def test_pickled_only_folder_is_refused_without_loading_it(tiny_clip, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_clip, folder)
    (folder / "model.safetensors").unlink()
    # A pickle whose loading would fail loudly: it is never opened.
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle")
    only_pickled = r"only pickled weights \(pytorch_model.bin\)"
    with pytest.raises(ClipUnavailable, match=only_pickled) as info:
        ClipScorer(folder)
    assert "huggingface-cli download" in str(info.value)


def test_incomplete_folders_are_refused(tiny_clip, tmp_path):
    no_config = tmp_path / "no-config"
    shutil.copytree(tiny_clip, no_config)
    (no_config / "config.json").unlink()
    with pytest.raises(ClipUnavailable, match=r"incomplete: no model config \(config.json\)"):
        ClipScorer(no_config)
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_clip, no_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (no_tokenizer / name).unlink(missing_ok=True)
    # transformers itself would load an empty tokenizer from this folder and score with it
    with pytest.raises(ClipUnavailable, match="incomplete: no tokenizer"):
        ClipScorer(no_tokenizer)
    no_processor = tmp_path / "no-processor"
    shutil.copytree(tiny_clip, no_processor)
    for name in ("preprocessor_config.json", "processor_config.json"):
        (no_processor / name).unlink(missing_ok=True)
    with pytest.raises(ClipUnavailable, match="incomplete: no image processor config"):
        ClipScorer(no_processor)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_clip, broken)
    (broken / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ClipUnavailable, match="cannot be loaded"):
        ClipScorer(broken)
