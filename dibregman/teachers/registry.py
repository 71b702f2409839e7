"""The teacher registry: names -> teacher classes and factories, open to plugins.

Built-in: ``mixture`` (the analytic Gaussian mixture of ``cfg.mixture``; the ``gmm2d`` and
``gmm16d`` presets are two of them), ``image`` (the EDM image teacher of
``cfg.image_teacher``), ``pretrained`` (a network imported by ``bench teacher import``) and
``text_digits`` (a text-to-image digits teacher this package trains, :mod:`.text_image`).
Add a teacher with :func:`register_teacher`, or ship it in your own package under the
``dibregman.teachers`` entry-point group, which every process (``bench run``, ``bench sweep``
and its Ray workers, a resumed run) reads on its first lookup::

    # pyproject.toml of your package
    [project.entry-points."dibregman.teachers"]
    moons = "my_package.teachers:MoonsTeacher"   # a Teacher subclass

The entry point's name is the teacher's name (``teacher = "moons"`` in a config); its object is
a :class:`~dibregman.teachers.base.Teacher` subclass, built by its ``from_config(cfg, device)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

import torch

from dibregman.config import Config
from dibregman.registry import Registry
from dibregman.teachers.base import Teacher, TeacherKind
from dibregman.teachers.image import ImageTeacher
from dibregman.teachers.mixture import GaussianMixtureTeacher
from dibregman.teachers.pretrained import PretrainedTeacher
from dibregman.teachers.text_image import TextDigitsTeacher
from dibregman.teachers.text_pretrained import PretrainedTextTeacher

ENTRY_POINT_GROUP = "dibregman.teachers"

TeacherFactory = Callable[[Config, torch.device], Teacher]


@dataclass(frozen=True)
class TeacherEntry:
    """A registered teacher.

    Attributes:
        name: the config's ``teacher`` value.
        teacher_class: what the factory returns; its ``kind`` and ``evaluator`` are known
            before anything is built (for validation, sweep specs and reports).
        factory: ``(cfg, device) -> Teacher``.
        source: ``built-in``, ``register_teacher`` or the entry point's ``module:object``.
    """

    name: str
    teacher_class: type[Teacher]
    factory: TeacherFactory
    source: str

    @property
    def kind(self) -> TeacherKind:
        return self.teacher_class.kind


TEACHERS: Registry[TeacherEntry] = Registry("teacher")
_entry_points_loaded = False


def register_teacher(name: str, teacher_class: type[Teacher],
                     factory: TeacherFactory | None = None, *,
                     source: str = "register_teacher") -> None:
    """Make a teacher available under ``name`` in this process.

    Args:
        name: what configs write as ``teacher``.
        teacher_class: a :class:`Teacher` subclass (its ``kind`` and ``evaluator`` declare what
            it is).
        factory: ``(cfg, device) -> Teacher``; default ``teacher_class.from_config``.

    Raises:
        ValueError: ``name`` is taken, or ``teacher_class`` is no ``Teacher`` subclass.
    """
    if not (isinstance(teacher_class, type) and issubclass(teacher_class, Teacher)):
        raise ValueError(f"teacher {name!r}: {teacher_class!r} is not a Teacher subclass")
    if name in TEACHERS:
        raise ValueError(f"teacher {name!r} is registered already "
                         f"({TEACHERS[name].source})")
    TEACHERS.add(name, TeacherEntry(name, teacher_class, factory or teacher_class.from_config,
                                    source))


def _load_entry_points() -> None:
    """Register every ``dibregman.teachers`` entry point of the installed packages, once.

    A plugin that fails to load, is no ``Teacher`` subclass or takes a name already registered
    is skipped with a warning naming it: one broken package must not hide the others."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            register_teacher(point.name, point.load(), source=point.value)
        except Exception as err:  # noqa: BLE001 - any import error of a third-party plugin
            warnings.warn(f"teacher plugin {point.name} = {point.value} skipped: "
                          f"{type(err).__name__}: {err}", stacklevel=2)


def teacher_names() -> list[str]:
    """Sorted names of every registered teacher, plugins included."""
    _load_entry_points()
    return TEACHERS.names()


def teacher_entry(name: str) -> TeacherEntry:
    """The entry of ``name``; an unknown name raises ``ValueError`` listing the valid ones."""
    _load_entry_points()
    return TEACHERS[name]


def teacher_for(cfg: Config, device: str | torch.device = "cpu") -> Teacher:
    """The teacher ``cfg.teacher`` names, built for ``cfg`` on ``device``.

    Raises:
        ValueError: unknown name, or a factory that returned something else than its
            registered class.
    """
    entry = teacher_entry(cfg.teacher)
    teacher = entry.factory(cfg, torch.device(device))
    if not isinstance(teacher, entry.teacher_class):
        raise ValueError(f"teacher {cfg.teacher!r}: the factory returned a "
                         f"{type(teacher).__name__}, not a {entry.teacher_class.__name__}")
    return teacher.to(device)


register_teacher("mixture", GaussianMixtureTeacher, source="built-in")
register_teacher("image", ImageTeacher, source="built-in")
register_teacher("pretrained", PretrainedTeacher, source="built-in")
register_teacher("text_digits", TextDigitsTeacher, source="built-in")
register_teacher("pretrained_text", PretrainedTextTeacher, source="built-in")
