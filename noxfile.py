"""Sessions: `nox -s tests`, `nox -s slow`, `nox -s lint`, `nox -s docs`, `nox -s reports`,
`nox -s bench_engine`.

Every session runs in the environment nox itself was started from (`python=False`, and
`sys.executable` rather than whatever `python` is first on PATH): the project's `.venv`,
installed by `pip install -e '.[test]'`. A nox-made virtualenv per session would install a
second multi-GB torch build for nothing.
"""

import shutil
import sys
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
PYTHON = sys.executable


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """The fast suite (slow-marked tests excluded: end-to-end sweeps and runs on several
    processes; under 5 minutes on 2 cores)."""
    session.run(PYTHON, "-m", "pytest", "-q", "--durations=10", *session.posargs)


@nox.session(python=False)
def slow(session: nox.Session) -> None:
    """End-to-end checks on full presets (minutes)."""
    session.run(PYTHON, "-m", "pytest", "-q", "-m", "slow", *session.posargs)


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    """ruff over the packages, tests, benchmarks and this file; then the import contracts of
    pyproject.toml (layers, no import circles, an engine free of harness libraries)."""
    session.run(PYTHON, "-m", "ruff", "check", "dibregman", "bench", "tests", "benchmarks",
                "noxfile.py")
    session.run(str(Path(PYTHON).parent / "lint-imports"), "--no-cache")


@nox.session(python=False)
def bench_engine(session: nox.Session) -> None:
    """Per-generator table of `bench run --preset gmm2d`: FD drop, quality, wall time, memory."""
    session.run(PYTHON, "benchmarks/engine.py", *session.posargs)


@nox.session(python=False)
def faults(session: nox.Session) -> None:
    """The fault benchmark: real sweeps through hard kills, concurrent starts and bad
    filesystems, one table row per fault and round (about 15 minutes on 2 cores)."""
    session.run(PYTHON, "benchmarks/faults.py", *session.posargs)


@nox.session(python=False)
def docs(session: nox.Session) -> None:
    """The reference page from the code, then the docs site with `mkdocs build --strict`
    (mkdocs-material from the `docs` extra) into site/."""
    session.run(PYTHON, "-m", "pip", "install", "--quiet", "-e", ".[docs]")
    with open("docs/reference.md", "w") as page:
        session.run(PYTHON, "-m", "bench.reference", stdout=page)
    session.run(str(Path(PYTHON).parent / "mkdocs"), "build", "--strict")


# The committed reports: the default sweep and the scenario ladder (docs/tasks.md).
EXAMPLE_SWEEPS = ["divergences", "scenario-small-student", "scenario-weak-ratio",
                  "scenario-imbalanced", "scenario-oracle", "text-to-image"]


@nox.session(python=False)
def reports(session: nox.Session) -> None:
    """Regenerate the committed reports (`nox -s reports -- NAME...` for some of them): each
    sweep of sweeps/NAME.yaml into its own store under runs/example/, then every report into
    reports/NAME/. Run it on a clean checkout of the final code (commit first): sweeps and
    reports record the code's git revision, `+dirty` when the tree had changes, so the reports
    are built outside the tree (runs/example/reports/, ignored) and move into reports/ only
    after the last sweep. About two hours on 2 cores for all six (text-to-image alone: 70
    minutes)."""
    bench = str(Path(PYTHON).parent / "bench")
    names = session.posargs or EXAMPLE_SWEEPS
    for name in names:
        store = f"sqlite:///runs/example/{name}.db"
        session.run(bench, "sweep", f"sweeps/{name}.yaml", "--tracking-uri", store,
                    "--storage", "runs/example/ray")
    for name in names:
        session.run(bench, "report", name, "--tracking-uri", f"sqlite:///runs/example/{name}.db",
                    "--out", f"runs/example/reports/{name}")
    for name in names:
        shutil.rmtree(f"reports/{name}", ignore_errors=True)
        shutil.copytree(f"runs/example/reports/{name}", f"reports/{name}")


@nox.session(python=False)
def gpu(session: nox.Session) -> None:
    """The accelerator table of `benchmarks/gpu.py`: a cifar10 distillation iteration (time,
    MFU, peak memory; bf16, torch.compile), a tiny text-to-image step, and torchrun DDP against
    one process (under 10 minutes on one H100; CPU-sized without CUDA, one to two minutes;
    `nox -s gpu -- --tiny` forces that)."""
    session.run(PYTHON, "benchmarks/gpu.py", *session.posargs)
