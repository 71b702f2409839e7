"""The teacher's own values and the quality gates a student must pass before it is compared."""

import pytest

from dibregman.evaluate import teacher_reference
from dibregman.evaluators import ImageEvaluator, MixtureEvaluator, VectorEvaluator
from dibregman.presets import get_preset


def test_the_teachers_own_heun_samples_cover_every_mode_and_pass_the_gate():
    cfg = get_preset("gmm2d-tiny")
    teacher = teacher_reference(cfg)
    n = cfg.eval.n_final
    assert teacher[f"modes_covered_n{n}"] == 8
    assert teacher[f"off_mode_n{n}"] < 0.02  # the 99.9 % regions hold nearly all its samples
    assert MixtureEvaluator.quality_gate(teacher, teacher)[0]


@pytest.mark.parametrize(("student", "passes"), [
    ({"modes_covered_n512": 8.0, "off_mode_n512": 0.06}, True),
    ({"modes_covered_n512": 7.0, "off_mode_n512": 0.06}, False),  # a dropped mode
    ({"modes_covered_n512": 8.0, "off_mode_n512": 0.2}, False),  # mass between modes
])
def test_the_mixture_gate_wants_every_mode_and_little_mass_between_them(student, passes):
    teacher = {"modes_covered_n512": 8.0, "off_mode_n512": 0.002}
    result, rule = MixtureEvaluator.quality_gate(student, teacher)
    assert result is passes and "modes covered" in rule and "off-mode share" in rule


def test_the_vector_and_image_gates_compare_with_the_teachers_own_values():
    teacher = {"precision_k3_n256": 0.9, "recall_k3_n256": 0.9}
    assert VectorEvaluator.quality_gate({"precision_k3_n256": 0.8, "recall_k3_n256": 0.75},
                                        teacher)[0]
    assert not VectorEvaluator.quality_gate({"precision_k3_n256": 0.5, "recall_k3_n256": 0.9},
                                            teacher)[0]
    assert ImageEvaluator.quality_gate({"fd_cls_n512": 2.0}, {"fd_cls_n512": 1.0})[0]
    assert not ImageEvaluator.quality_gate({"fd_cls_n512": 4.0}, {"fd_cls_n512": 1.0})[0]
    fid = {"fd_cls_n512": 100.0, "fid_n512": 10.0}  # FID, when measured, decides
    assert ImageEvaluator.quality_gate(fid, {"fd_cls_n512": 1.0, "fid_n512": 5.0})[0]
