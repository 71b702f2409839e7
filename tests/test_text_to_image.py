"""The CPU text-to-image task: prompt sets, the tiny CLIP, classifier-free guidance, captioned
training labels, the teacher side of the ratio estimator, the CLIP score and a tiny run."""

from __future__ import annotations

import pytest
import torch

from dibregman.config import ConfigError, with_overrides
from dibregman.data import load_dataset
from dibregman.evaluate import declared_metrics
from dibregman.presets import get_preset
from dibregman.run import run_experiment
from dibregman.teachers.image import build_denoiser
from dibregman.teachers.text_image import TextDigitsTeacher, caption_conditions
from dibregman.text import (
    PromptError,
    TinyClip,
    cached_clip,
    load_prompts,
    named_digit,
    template_prompts,
    vocabulary,
)
from dibregman.validation import validate


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def clip(digits):
    """A tiny CLIP fitted for 150 steps: enough to tell the digits apart on their images."""
    return cached_clip(digits.images, digits.labels, template_prompts(), 16, 150, seed=0,
                       width=32)


def untrained_teacher(digits, clip, guidance_scale):
    """A text teacher around a random U-Net (its label embedding non-zero, so text matters)."""
    cfg = get_preset("digits-t2i-tiny").image_teacher
    torch.manual_seed(0)
    network = build_denoiser(cfg, digits, label_dim=16)
    with torch.no_grad():
        for p in network.parameters():
            p.normal_(0, 0.2)
    return TextDigitsTeacher(network, digits, cfg, clip.text, template_prompts(), guidance_scale)


def test_template_prompts_name_digit_k_mod_10_and_prompt_files_are_checked(tmp_path):
    prompts = template_prompts()
    assert len(prompts) == 50 and prompts.prompts[13] == "3"
    assert prompts.digits.tolist() == [k % 10 for k in range(50)]
    assert all(named_digit(p) == int(d) for p, d in zip(prompts.prompts, prompts.digits,
                                                        strict=True))
    good = tmp_path / "good.txt"
    good.write_text("a handwritten seven\n\n7\nthe digit 0\n")
    assert load_prompts(f"file:{good}").digits.tolist() == [7, 7, 0]
    bad = tmp_path / "bad.txt"
    bad.write_text("a bold seven\n")
    with pytest.raises(PromptError, match="does not know: bold; its vocabulary: "):
        load_prompts(f"file:{bad}")
    with pytest.raises(PromptError, match="names 2 digits"):
        named_digit("three or 4")
    with pytest.raises(PromptError, match="'templates' or 'file:PATH'"):
        load_prompts("coco")
    with pytest.raises(PromptError, match="no prompt file"):
        load_prompts(f"file:{tmp_path / 'absent.txt'}")
    assert "handwritten" in vocabulary() and "nine" in vocabulary()


def test_text_tower_gives_unit_vectors_a_bag_of_words_and_its_own_null_prompt():
    torch.manual_seed(0)
    model = TinyClip(1, 8)
    with torch.no_grad():
        model.text.null.normal_()
        e = model.text(["a handwritten three", "three handwritten a", "", "three"])
    assert torch.allclose(e.norm(dim=1), torch.ones(4), atol=1e-6)
    assert torch.allclose(e[0], e[1], atol=1e-6)  # word order does not matter
    assert (e[2] - e[3]).norm() > 1e-3  # the empty prompt is its own condition


def test_trained_clip_scores_the_named_digit_above_the_others(digits, clip):
    images = digits.images[:500]
    right = clip.score(images, [str(int(d)) for d in digits.labels[:500]])
    wrong = clip.score(images, [str(int(d + 1) % 10) for d in digits.labels[:500]])
    assert ((right >= 0) & (right <= 100)).all()
    assert right.mean() > wrong.mean() + 20
    retrieved = (clip.image(images) @ clip.text([str(d) for d in range(10)]).T).argmax(1)
    assert (retrieved == digits.labels[:500]).float().mean() > 0.9


@pytest.mark.parametrize("w", [1.0, 0.0, 2.5])
def test_guided_denoiser_is_unconditional_plus_w_times_the_conditional_difference(digits, clip,
                                                                                   w):
    teacher = untrained_teacher(digits, clip, w)
    ids = torch.tensor([3, 17, 40])
    labels = teacher.condition(ids)
    x, sigma = torch.randn(3, 1, 8, 8), torch.tensor([0.3, 1.0, 5.0])
    with torch.no_grad():
        conditional = teacher.network(x, sigma, labels)
        unconditional = teacher.network(x, sigma, teacher.null.expand_as(labels))
    expected = unconditional + w * (conditional - unconditional)
    scale = expected.abs().max()
    assert (teacher.denoise(x, sigma, labels) - expected).abs().max() <= 1e-5 * scale
    assert (conditional - unconditional).abs().max() > 1e-3 * scale  # the text matters


def test_conditions_are_prompt_embeddings_and_pick_the_named_digits_images(digits, clip):
    teacher = untrained_teacher(digits, clip, 2.0)
    assert teacher.num_classes == 50 and teacher.condition_dim == 16
    ids = torch.arange(50)
    labels = teacher.condition(ids)
    assert torch.equal(teacher.prompt_ids(labels), ids)
    rng = torch.Generator().manual_seed(0)
    images = teacher.sample_data(50, rng, labels)
    by_digit = {d: digits.images[digits.labels == d] for d in range(10)}
    for image, digit in zip(images, teacher.prompts.digits, strict=True):
        assert (by_digit[int(digit)] == image).all(dim=(1, 2, 3)).any()


def test_caption_dropout_replaces_that_share_of_captions_by_the_empty_prompt(digits, clip):
    prompts = template_prompts()
    conditions = caption_conditions(digits, prompts, clip.text, 0.25, torch.device("cpu"))
    index = torch.arange(4000) % len(digits.images)
    labels = conditions(index, torch.Generator().manual_seed(1))
    with torch.no_grad():
        table, null = clip.text(list(prompts.prompts)), clip.text([""])[0]
    dropped = (labels == null).all(dim=1)
    share = dropped.float().mean().item()
    assert abs(share - 0.25) < 4 * (0.25 * 0.75 / 4000) ** 0.5  # binomial, 4 standard errors
    kept = torch.cdist(labels[~dropped], table).argmin(dim=1)
    assert torch.equal(prompts.digits[kept], digits.labels[index[~dropped]])


def test_text_keys_are_refused_for_teachers_without_prompts_and_checked_for_range():
    with pytest.raises(ConfigError, match="text.guidance_scale=3.0 does not apply to teacher "
                                          "'image'"):
        validate(with_overrides(get_preset("digits-tiny"), {"text.guidance_scale": 3.0}))
    with pytest.raises(ConfigError, match="text.caption_dropout must lie in"):
        validate(with_overrides(get_preset("digits-t2i-tiny"), {"text.caption_dropout": 1.0}))
    names = {m.key for m in declared_metrics(get_preset("digits-t2i"))}
    assert {"clip_score_n500", "clip_score_n1797", "class_accuracy_n1797"} <= names


def test_tiny_text_to_image_run_measures_quality_and_prompt_agreement(tmp_path):
    cfg = get_preset("digits-t2i-tiny")
    result = run_experiment(cfg, tmp_path / "run")
    metrics = result.record()["metrics"]
    n = cfg.eval.n_final
    assert 0 <= metrics[f"clip_score_n{n}"] <= 100
    assert 0 <= metrics[f"class_accuracy_n{n}"] <= 1
    assert metrics[f"fd_cls_n{n}"] > 0
