"""The sweep's live progress: a Ray Tune callback that shows what is moving and what is known.

On a terminal it keeps one live panel (rich), redrawn a few times a second:

* the elapsed time, the runs ended (by status) out of the total and an ETA from the pace so far;
* every running trial with its generator steps done out of its total (from the records its
  runs report every ``log_every`` steps);
* every arm that has ended runs, by the *mean over its finished seeds* of the headline metric
  (the metric the report ranks by; the sweep's curve metric when the spec declares none), with
  how many of its seeds have finished. One seed is never crowned: a seed's value is noise
  around its arm's.

Elsewhere (a CI log, a file) it prints the same as plain lines, one every ``interval`` seconds
and one when a run ends.

The callback also keeps the tally of how every run of the sweep ended, restored ones included,
which the driver reports at the end. Runs are keyed ``(trial id, seed)``: a trial of a seed
batch holds several.
"""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar

from ray.tune import Callback
from ray.tune.experiment import Trial
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from bench.spec import SweepSpec, arm_name, batch_name
from dibregman.results import Status


class LiveView(Callback):
    """The live progress of a sweep (see the module docstring).

    Args:
        spec: the sweep.
        total: its runs.
        console: where it draws.
        headline: the final metric arms are shown by, and whether lower is better.
        interval: seconds between plain lines when the console is not a terminal.
    """

    # Tuner.restore brings back the callbacks pickled with the experiment, not the ones the
    # driver builds for the resumed session: the view in use registers itself here.
    active: ClassVar[LiveView | None] = None

    def __init__(self, spec: SweepSpec, total: int, console: Console,
                 headline: tuple[str, bool], interval: float = 30.0) -> None:
        self.spec = spec
        self.total = total
        self.console = console
        self.headline, self.lower_is_better = headline
        self.interval = interval
        self.ended: dict[tuple[str, int], Status] = {}  # (trial id, seed) -> how it ended
        self.values: dict[str, dict[int, float]] = {}  # arm -> seed -> final headline
        # running trial -> (name, step, total steps, seeds it trains)
        self.steps: dict[str, tuple[str, int, int, int]] = {}
        self.all_trials: list[Trial] | None = None
        self.restored = False
        self.started_at = time.monotonic()
        self.printed_at = 0.0
        self.live: Live | None = None
        self.note = ""  # what the sweep is doing before its first trial reports
        LiveView.active = self

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state; consoles and live panels hold
        # locks and threads.
        return {k: v for k, v in self.__dict__.items() if k not in ("console", "live")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Restored with the experiment on --resume: take over the display of the view the
        # driver started for this session (its console, clock and live panel).
        self.__dict__.update(state)
        previous = LiveView.active
        self.console = previous.console if previous is not None else Console()
        self.live, self.note = (previous.live, "") if previous is not None else (None, "")
        self.started_at = previous.started_at if previous is not None else time.monotonic()
        if previous is not None:
            previous.live = None
        self.restored, self.steps, self.printed_at = False, {}, 0.0
        LiveView.active = self

    # -- what is known ----------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """How many runs ended each way (every ending status, zeros included)."""
        counts = {str(s): 0 for s in Status if s is not Status.RUNNING}
        for status in self.ended.values():
            counts[str(status)] += 1
        return counts

    def arms(self) -> list[tuple[str, float, int]]:
        """``(arm, mean headline over its finished seeds, finished seeds)``, best first."""
        rows = [(arm, sum(v.values()) / len(v), len(v))
                for arm, v in list(self.values.items()) if v]
        return sorted(rows, key=lambda row: row[1] if self.lower_is_better else -row[1])

    def interrupted(self) -> bool:
        """True if some run neither ended nor failed (Ctrl-C, a killed driver)."""
        if self.all_trials is None:
            return True
        return len(self.ended) < sum(len(t.config["seeds"]) for t in self.all_trials)

    def _end(self, trial: Trial, seed: int, status: Status, value: Any) -> None:
        self.ended[(trial.trial_id, seed)] = status
        if status is Status.FINISHED and isinstance(value, float) and math.isfinite(value):
            self.values.setdefault(arm_name(trial.config["overrides"]), {})[seed] = value

    def _end_unfinished(self, trial: Trial, status: Status) -> None:
        """Every run of ``trial`` that reported no final record ended ``status``."""
        for seed in trial.config["seeds"]:
            if (trial.trial_id, seed) not in self.ended:
                self._end(trial, seed, status, None)
        self.steps.pop(trial.trial_id, None)

    # -- drawing ------------------------------------------------------------------------------

    def _eta(self) -> str:
        # A running trial of K seeds has done step / total of each of its K runs.
        done = len(self.ended) + sum(seeds * step / total
                                     for _, step, total, seeds in list(self.steps.values())
                                     if total)
        elapsed = time.monotonic() - self.started_at
        if done <= 0:
            return "ETA –"
        left = elapsed / done * (self.total - done)
        return f"ETA {left / 60:.1f} min"

    def _status_line(self) -> str:
        elapsed = time.monotonic() - self.started_at
        counts = "  ".join(f"{k} {v}" for k, v in self.counts().items() if v)
        note = f" · {self.note}" if self.note and not self.steps and not self.ended else ""
        return (f"{self.spec.name}: {len(self.ended)}/{self.total} runs ended"
                f"{' (' + counts + ')' if counts else ''} · {len(self.steps)} trials running · "
                f"{elapsed / 60:.1f} min · {self._eta()}{note}")

    def renderable(self) -> Group:
        """The live panel: status, running trials' steps, arms by their seed-mean headline."""
        running = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
        running.add_column("running trial")
        running.add_column("generator steps", justify="right")
        for name, step, total, _ in sorted(list(self.steps.values())):
            bar = "█" * int(20 * step / total) + "░" * (20 - int(20 * step / total)) \
                if total else ""
            running.add_row(name, f"{bar} {step}/{total}")
        arms = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
        arms.add_column("arm")
        arms.add_column(f"{self.headline}, mean over finished seeds", justify="right")
        arms.add_column("seeds finished", justify="right")
        seeds = len(self.spec.seeds)
        for arm, mean, n in self.arms():
            arms.add_row(arm, f"{mean:.4g}", f"{n}/{seeds}")
        parts: list[Any] = [self._status_line()]
        if self.steps:
            parts.append(running)
        if self.values:
            parts.append(arms)
        return Group(*parts)

    def _plain(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.printed_at < self.interval:
            return
        self.printed_at = now
        moving = "; ".join(f"{name} {step}/{total}" for name, step, total, _ in
                           sorted(list(self.steps.values())))
        arms = "; ".join(f"{arm} {mean:.4g} ({n} seeds)" for arm, mean, n in self.arms())
        self.console.print(self._status_line() + (f" | running: {moving}" if moving else "")
                           + (f" | {self.headline} by arm: {arms}" if arms else ""),
                           highlight=False, soft_wrap=True)

    def refresh(self, force: bool = False) -> None:
        """Redraw (a terminal) or print a line when one is due (elsewhere)."""
        if self.live is not None:
            self.live.update(self.renderable())
        else:
            self._plain(force)

    def start(self) -> None:
        """Start drawing: a live panel on a terminal (redrawn 4 times a second, so the clock
        moves before the first record), else the first plain line."""
        if self.console.is_terminal and self.live is None:
            self.live = Live(self.renderable(), console=self.console, refresh_per_second=4,
                             get_renderable=self.renderable, transient=False)
            self.live.start()
        else:
            self._plain(force=True)

    def stop(self) -> None:
        """Stop the live panel (its last state stays on screen), or print a last line."""
        if self.live is not None:
            self.live.stop()
            self.live = None
        else:
            self._plain(force=True)

    # -- Tune's callbacks -------------------------------------------------------------------

    def on_step_begin(self, iteration: int, trials: list[Trial], **info) -> None:
        if not self.restored:  # a restored sweep: trials that ended in an earlier session
            self.restored = True
            for trial in trials:
                if trial.status == Trial.TERMINATED:
                    self._end_unfinished(trial, Status.FINISHED)
        self.refresh()

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict,
                        **info) -> None:
        if result.get("final"):
            self._end(trial, int(result["seed"]), Status(result["status"]),
                      result.get(self.headline, result.get(self.spec.metric)))
            self.refresh(force=True)
            return
        total = self._total_steps(trial)
        seeds = list(trial.config["seeds"])
        name = batch_name(trial.config["overrides"], seeds)
        step = int(result.get("step", 0))
        previous = self.steps.get(trial.trial_id, (name, 0, total, len(seeds)))[1]
        self.steps[trial.trial_id] = (name, max(step, previous), total, len(seeds))
        self.refresh()

    def _total_steps(self, trial: Trial) -> int:
        steps = trial.config["overrides"].get("train.generator_steps")
        return int(steps) if steps is not None else self.spec.base_config().train.generator_steps

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info):
        self._end_unfinished(trial, Status.STOPPED)
        self.refresh(force=True)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info):
        self._end_unfinished(trial, Status.FAILED)
        self.refresh(force=True)

    def on_experiment_end(self, trials: list[Trial], **info) -> None:
        self.all_trials = list(trials)
