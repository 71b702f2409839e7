"""`bench list`: what is registered (generators, methods, estimators, presets, teachers, metrics,
config keys)."""

from __future__ import annotations

from rich.table import Table

from bench.cli.common import console
from dibregman.bregman import generator_names, get_generator, is_parametric
from dibregman.config import EvalConfig, config_keys
from dibregman.data import dataset_names
from dibregman.equivalence import known_equivalences
from dibregman.methods import METHODS
from dibregman.presets import preset_names
from dibregman.ratio import estimator_names
from dibregman.results import MetricSpec
from dibregman.teachers import teacher_entry, teacher_names


def list_() -> None:
    """Print the registered generators, methods, ratio estimators, presets, metrics and config
    keys."""
    table = Table(title="Bregman generators h (w = h''(r) r, r = student/teacher)")
    table.add_column("name")
    table.add_column("divergence")
    for name in generator_names():
        record = get_generator(name)
        family = " (uses generator.alpha)" if is_parametric(name) else ""
        table.add_row(name, record.description + family)
    console.print(table)
    classes = "; ".join(" = ".join(labels) for labels in known_equivalences())
    console.print("[bold]equivalent under batch-mean weight normalisation[/] "
                  "(ratio.weight_normalize: weights equal up to a constant train identically): "
                  + classes
                  + "; in general alpha α=a = power α=a-1 for a > 1", highlight=False)
    console.print("[bold]χ² orientation:[/] with r = q/p (student/teacher), pearson has w = r "
                  "and neyman w = 1/r²; codebases that write the ratio as p/q swap the names "
                  "(FastGen's f-distill calls our pearson neyman)", highlight=False)
    console.print("[bold]methods:[/] " + ", ".join(METHODS.names()))
    console.print("[bold]ratio estimators:[/] " + ", ".join(estimator_names()))
    console.print("[bold]presets:[/] " + ", ".join(preset_names()))
    console.print("[bold]image datasets:[/] " + ", ".join(dataset_names()) + ", folder:PATH")
    teachers = Table(title="Teachers (config key teacher; plugins via register_teacher or the "
                           "dibregman.teachers entry-point group)")
    for column in ("name", "kind", "evaluator", "source"):
        teachers.add_column(column)
    for name in teacher_names():
        entry = teacher_entry(name)
        teachers.add_row(name, str(entry.kind), entry.teacher_class.evaluator.__name__,
                         entry.source)
    console.print(teachers)
    evaluators = {teacher_entry(name).teacher_class.evaluator for name in teacher_names()}
    for evaluator in sorted(evaluators, key=lambda e: e.__name__):
        console.print(metrics_table(evaluator.__name__, evaluator.metrics(EvalConfig())))
    console.print("[bold]config keys:[/] " + ", ".join(config_keys()))


def metrics_table(title: str, specs: list[MetricSpec]) -> Table:
    """The declared metrics of an evaluator (at the default sample counts) as a table."""
    table = Table(title=f"{title} metrics (default eval.* sample counts; keys carry the count)")
    for column in ("key", "label", "better", "role", "when"):
        table.add_column(column)
    for spec in specs:
        table.add_row(spec.key, spec.label, str(spec.direction), str(spec.role), str(spec.stage))
    return table
