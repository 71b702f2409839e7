"""Config keys, overrides, presets and validation."""

import json

import pytest

from dibregman.config import (
    Config,
    ConfigError,
    config_keys,
    flatten,
    from_dict,
    to_dict,
    with_overrides,
)
from dibregman.presets import get_preset, preset_names
from dibregman.validation import validate


def test_overrides_coerce_strings_by_field_type():
    cfg = with_overrides(Config(), {"train.lr": "2e-4", "train.batch_size": "64",
                                    "ratio.bin_normalize": "false", "generator.name": "pearson",
                                    "train.betas": "0.5,0.9"})
    assert cfg.train.lr == 2e-4 and cfg.train.batch_size == 64
    assert cfg.ratio.bin_normalize is False and cfg.generator.name == "pearson"
    assert cfg.train.betas == (0.5, 0.9)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="unknown config key 'train.lrr'") as info:
        with_overrides(Config(), {"train.lrr": 1})
    assert "train.lr" in str(info.value) and "generator.alpha" in str(info.value)


@pytest.mark.parametrize("key", ["train", "generator.name.x", "nope"])
def test_section_or_too_deep_key_is_unknown(key):
    with pytest.raises(ConfigError, match="unknown config key"):
        with_overrides(Config(), {key: 1})


@pytest.mark.parametrize(("key", "value"), [("train.lr", "fast"), ("train.batch_size", "1.5"),
                                            ("ratio.bin_normalize", "maybe"),
                                            ("train.batch_size", True), ("train.lr", "nan")])
def test_bad_value_names_key_and_type(key, value):
    with pytest.raises(ConfigError, match=f"bad value .* for {key}: expected"):
        with_overrides(Config(), {key: value})


def test_round_trip_through_json():
    cfg = with_overrides(get_preset("gmm16d-tiny"), {"seed": 3, "generator.alpha": 0.25})
    assert from_dict(json.loads(json.dumps(to_dict(cfg)))) == cfg
    assert set(flatten(cfg)) == set(config_keys())


def test_round_trip_keeps_empty_and_non_empty_tuples():
    """``tuple[X, ...]`` fields may be empty (``()`` <-> ``[]``); fixed-length ones may not."""
    cfg = with_overrides(get_preset("gmm2d-tiny"), {"mixture.weights": "", "train.betas": "0.5,0.9",
                                                    "image_teacher.channel_mult": [1, 2, 2]})
    data = json.loads(json.dumps(to_dict(cfg)))
    assert data["mixture"]["weights"] == [] and data["mixture"]["means"] == []
    assert data["image_teacher"]["channel_mult"] == [1, 2, 2]
    assert data["train"]["betas"] == [0.5, 0.9]
    assert from_dict(data) == cfg and from_dict(data).mixture.weights == ()
    with pytest.raises(ConfigError, match="bad value .* for train.betas"):
        with_overrides(cfg, {"train.betas": []})


def test_every_preset_is_valid_and_has_a_tiny_variant_but_the_imported_teachers():
    for name in preset_names():
        validate(get_preset(name))
        base = name.removesuffix("-tiny")
        has_tiny = f"{base}-tiny" in preset_names()
        imported = get_preset(base).teacher in ("pretrained", "pretrained_text")
        assert has_tiny == (not imported), name


def test_unknown_preset_lists_valid():
    with pytest.raises(ConfigError, match="valid: cifar10, cifar10-edm, cifar10-paper, "
                                          "cifar10-tiny, digits, digits-t2i, digits-t2i-tiny, "
                                          "digits-tiny"):
        get_preset("gmm3d")


@pytest.mark.parametrize(("override", "message"), [
    ({"generator.name": "kl"}, "unknown Bregman generator 'kl'"),
    ({"generator.name": "power", "generator.alpha": -1.0}, "generator.alpha"),
    ({"ratio.estimator": "svm"}, "valid: classifier, kliep, oracle, ulsif"),
    ({"teacher": "mnist9"}, "unknown teacher"),
    ({"train.sigma_min": 30.0}, "sigma_min < train.sigma_max"),
    ({"ratio.clip_min": 0.0}, "ratio.clip_min"),
    ({"train.fake_lr_scale": 0.0}, "train.fake_lr_scale must be > 0"),
    ({"train.gan_weight": -1.0}, "train.gan_weight must be >= 0"),
    ({"train.regression_weight": -0.5}, "train.regression_weight must be >= 0"),
    ({"train.regression_pairs": 0}, "train.regression_pairs must be >= 1"),
])
def test_validate_names_the_problem(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(with_overrides(Config(), override))


@pytest.mark.parametrize(("preset", "key", "value", "kind"), [
    ("gmm2d", "train.sigma_init", "2.5", "vector"),
    ("gmm16d", "image_teacher.steps", "100", "vector"),
    ("gmm2d", "eval.fid_n", "100", "vector"),
    ("digits", "net.hidden", "64", "image"),
    ("digits", "mixture.modes", "4", "image"),
])
def test_a_key_that_does_not_apply_to_the_teacher_is_an_error_naming_why(preset, key, value,
                                                                        kind):
    with pytest.raises(ConfigError, match=f"{key}={value}.* does not apply .*{kind} teacher"):
        validate(with_overrides(get_preset(preset), {key: value}))


def test_the_schema_is_a_leaf_and_importing_it_loads_no_other_registry():
    """The schema and the presets load the registry type (a leaf), and no registry of
    generators, estimators, methods or teachers."""
    import subprocess
    import sys

    code = ("import sys, dibregman.config, dibregman.presets\n"
            "print(sorted(m for m in sys.modules if m.startswith('dibregman.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert loaded.strip() == "['dibregman.config', 'dibregman.presets', 'dibregman.registry']"
