"""Methods over the shared trainer: the registry, DMD as one class, a new method as one class."""

from __future__ import annotations

import pytest
import torch

from dibregman.config import ConfigError, with_overrides
from dibregman.distill import Distiller
from dibregman.methods import METHODS, DiBregman, Method
from dibregman.presets import get_preset
from dibregman.registry import Registry, UnknownName
from dibregman.teachers import teacher_for
from dibregman.validation import validate


def tiny(**overrides):
    return with_overrides(get_preset("gmm2d-tiny"), {"train.batch_size": 32, **overrides})


def test_registry_names_the_kind_and_every_valid_name_for_an_unknown_one():
    registry = Registry("colour", {"red": 1, "blue": 2})
    assert registry["red"] == 1 and registry.names() == ["blue", "red"]
    with pytest.raises(UnknownName, match=r"unknown colour 'green'; valid: blue, red"):
        registry["green"]
    with pytest.raises(ValueError, match="already registered"):
        registry.add("red", 3)


def test_an_unknown_method_is_a_config_error_listing_the_methods():
    with pytest.raises(ConfigError, match=r"unknown method 'sid'; valid: di_bregman, dmd"):
        validate(tiny(method="sid"))


def test_dmd_refuses_a_generator_other_than_reverse_kl_and_the_oracle():
    with pytest.raises(ConfigError, match="generator.name='pearson' does not apply to method"):
        validate(tiny(method="dmd", **{"generator.name": "pearson"}))
    with pytest.raises(ConfigError, match="does not apply to method 'dmd'"):
        validate(tiny(method="dmd", **{"ratio.estimator": "oracle"}))
    validate(tiny(method="dmd"))


def test_dmd_reads_no_weights_and_records_no_weight_diagnostics():
    cfg = tiny(method="dmd")
    d = Distiller(cfg, teacher_for(cfg))
    record = d.step()[0]
    assert "loss_dm" in record and "weight_max" not in record
    di_bregman = Distiller(tiny(), teacher_for(cfg)).step()[0]
    assert "weight_max" in di_bregman


class ZeroWeight(Method):
    """A method that is one class: weights 0 everywhere (so no distribution-matching step)."""

    name = "zero_weight"

    def weights(self, x_s, batch):
        return torch.zeros(len(x_s)), [{"zero_weight_rows": float(len(x_s))}]


def test_a_new_method_is_one_registered_class_and_the_trainer_follows_its_losses(monkeypatch):
    """Registering a class is all a method needs: the config picks it, the trainer calls it
    with the step's draws, and its weights decide the update (zero weights: the student never
    moves, while the critics still train; with Adam a zero gradient is a zero step)."""
    registry = Registry("method", dict(METHODS.items()))
    registry.add(ZeroWeight.name, ZeroWeight)
    monkeypatch.setattr("dibregman.distill.METHODS", registry)
    cfg = tiny(method="zero_weight")
    d = Distiller(cfg, teacher_for(cfg))
    before = [p.clone() for p in d.student.parameters()]
    fake_before = [p.clone() for p in d.fake.parameters()]
    records = [d.step()[0] for _ in range(3)]
    assert isinstance(d.method, ZeroWeight)
    assert records[-1]["zero_weight_rows"] == cfg.train.batch_size
    assert records[-1]["loss_dm"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, d.student.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(fake_before, d.fake.parameters(),
                                                     strict=True))
    # the same run under Di-Bregman moves the student
    moved = Distiller(tiny(), teacher_for(cfg))
    moved.step()
    assert not all(torch.equal(a, b) for a, b in zip(before, moved.student.parameters(),
                                                     strict=True))


def test_the_default_method_is_di_bregman():
    cfg = tiny()
    assert cfg.method == "di_bregman"
    assert isinstance(Distiller(cfg, teacher_for(cfg)).method, DiBregman)


def test_a_step_record_holds_the_result_contracts_diagnostics_only():
    """Every key of a step's record is declared in dibregman.results (the weight pipeline's
    diagnostics, the losses, the non-finite count), and Di-Bregman records every weight
    diagnostic; with the GAN and regression terms on, their losses too."""
    from dibregman.results import LOSS_DIAGNOSTICS, STEP_RECORD_KEY, WEIGHT_DIAGNOSTICS

    cfg = tiny(**{"generator.name": "pearson", "train.gan_weight": 0.01,
                  "train.regression_weight": 0.5, "train.regression_pairs": 32})
    record = Distiller(cfg, teacher_for(cfg)).step()[0]
    assert set(record) <= {*WEIGHT_DIAGNOSTICS, *LOSS_DIAGNOSTICS, STEP_RECORD_KEY}
    assert set(WEIGHT_DIAGNOSTICS) | set(LOSS_DIAGNOSTICS) | {STEP_RECORD_KEY} == set(record)
