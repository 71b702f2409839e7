"""Teachers: the ``Teacher`` seam (every teacher is a denoiser ``D(x, sigma)``) and the
registry of named teachers, open to plugins (:mod:`dibregman.teachers.registry`)."""

from dibregman.teachers.base import Teacher, TeacherKind
from dibregman.teachers.image import ImageTeacher
from dibregman.teachers.mixture import GaussianMixtureTeacher
from dibregman.teachers.registry import (
    ENTRY_POINT_GROUP,
    TeacherEntry,
    register_teacher,
    teacher_entry,
    teacher_for,
    teacher_names,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "GaussianMixtureTeacher",
    "ImageTeacher",
    "Teacher",
    "TeacherEntry",
    "TeacherKind",
    "register_teacher",
    "teacher_entry",
    "teacher_for",
    "teacher_names",
]
