"""The sweep's live progress: steps moving within running trials, arms by the mean over their
finished seeds (never one seed crowned), plain lines where the output is not a terminal."""

import io
from types import SimpleNamespace

from rich.console import Console

from bench.progress import LiveView
from bench.spec import load_spec

SPEC = load_spec("sweeps/smoke.yaml")


def trial(trial_id: str, generator: str, seeds: list[int]) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, status="RUNNING",
                           config={"overrides": {"generator.name": generator}, "seeds": seeds})


def test_plain_lines_show_steps_moving_and_arms_by_their_seed_mean():
    out = io.StringIO()
    view = LiveView(SPEC, total=4, console=Console(file=out, width=300),
                    headline=("fd_n512", True), interval=0.0)
    view.note = "starting the Ray runtime"
    view.start()  # a line (a live panel on a terminal) before Ray is even up
    assert "0/4 runs ended" in out.getvalue() and "starting the Ray runtime" in out.getvalue()
    a, b = trial("a", "reverse_kl", [0, 1]), trial("b", "pearson", [0, 1])
    view.on_trial_result(0, [a, b], a, {"step": 2, "seed": 0})
    assert "reverse_kl-s0-1 2/6" in out.getvalue()  # steps within a running trial, moving
    for seed, value in ((0, 1.0), (1, 3.0)):
        view.on_trial_result(0, [a, b], a, {"final": True, "seed": seed, "status": "finished",
                                            "fd_n512": value})
    view.on_trial_result(0, [a, b], b, {"final": True, "seed": 0, "status": "finished",
                                        "fd_n512": 1.5})
    assert view.arms() == [("pearson", 1.5, 1), ("reverse_kl", 2.0, 2)]
    view.stop()
    last = out.getvalue().strip().splitlines()[-1]
    assert "3/4 runs ended" in last and "pearson 1.5 (1 seeds); reverse_kl 2 (2 seeds)" in last
    assert "best" not in out.getvalue()  # no seed is crowned
