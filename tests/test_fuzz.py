"""Fuzzing the two ways users type input: sweep spec files and ``--set KEY=VALUE``.

Whatever the input, the answer is a valid spec or config, or the one error type the CLI turns
into a one-line message and exit status 2 (``SpecError``, ``ConfigError``): never another
exception, which would reach the user as a traceback. ``benchmarks/fuzz.py`` runs thousands of
cases; this is the CI-sized property test.
"""

from __future__ import annotations

import math

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.cli import build_config
from bench.spec import SpecError, SweepSpec, load_spec
from dibregman.config import Config, ConfigError, config_keys

KEYS = config_keys(Config)
BASE_SPEC = {
    "name": "fuzz", "preset": "gmm2d-tiny", "metric": "fd_n256", "seeds": [0, 1],
    "seed_batch": 2,
    "grid": [{"generator": ["reverse_kl", "pearson"]},
             {"generator": ["alpha"], "generator.alpha": [0.5]}],
    "controls": {"aa": {"generator": "reverse_kl", "seed_stream": 1}},
    "headline": "off_mode_n512", "resources": {"cpu": 1, "gpu": 0}, "max_concurrent": 2,
    "time_budget_s": 60,
}

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["reverse_kl", "alpha", "gmm2d", "fd_n256", "max", "min", "a/b", "é" * 200,
                     "1e400", "-0", "nan", ".inf", "[1, 2", "{a: 1}"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from([*KEYS, "generator", "cpu", "gpu"]),
                              st.text(max_size=10)), inner, max_size=4)), max_leaves=12)
SPEC_KEYS = [*BASE_SPEC, "set", "search", "scheduler", "mode", "unknown"]


@st.composite
def mutated_specs(draw) -> dict:
    """The base spec with 1-4 top-level keys replaced, removed or added."""
    spec = dict(BASE_SPEC)
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(SPEC_KEYS))
        if draw(st.booleans()) and key in spec:
            del spec[key]
        else:
            spec[key] = draw(values)
    return spec


def _write(tmp_path, text: str | bytes):
    path = tmp_path / "spec.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(spec=mutated_specs())
def test_a_mutated_spec_is_valid_or_a_spec_error(tmp_path, spec):
    try:
        text = yaml.safe_dump(spec, allow_unicode=True)
    except (yaml.YAMLError, OverflowError):
        return  # not expressible as YAML: nothing a user could type
    try:
        parsed = load_spec(_write(tmp_path, text))
    except SpecError as err:
        assert str(err).startswith(str(tmp_path)) and "\n" not in str(err).strip()
        return
    assert isinstance(parsed, SweepSpec)
    assert len(parsed.trials()) >= 1 and 1 <= parsed.seed_batch <= len(parsed.seeds)
    if parsed.time_budget_s is not None:
        assert math.isfinite(parsed.time_budget_s)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_are_a_spec_error_or_a_spec(tmp_path, raw):
    try:
        load_spec(_write(tmp_path, raw))
    except SpecError:
        pass


set_values = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-2**80, max_value=2**80).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "true", "false", "none", "[1, 2]", "(0.9, 0.999)", "1e999", "-1",
                     "0", "nan", "inf", "ring", "grid", "cuda", "bf16", "é", "0x10"]),
)


@settings(max_examples=300, deadline=None)
@given(key=st.one_of(st.sampled_from([*KEYS, "generator", "train.lr ", "seed"]),
                     st.text(max_size=20)),
       value=set_values)
def test_a_fuzzed_set_value_is_valid_or_a_config_error(key, value):
    try:
        cfg = build_config("gmm2d-tiny", None, None, None, [f"{key}={value}"])
    except ConfigError as err:
        assert str(err).strip() and "\n" not in str(err).strip()
        return
    assert isinstance(cfg, Config)


wrong_shapes = st.one_of(
    st.integers(min_value=-2**40, max_value=2**40), st.floats(allow_nan=False),
    st.booleans(), st.none(), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(["a/b", "", ".inf", "1e999", "reverse_kl"]))


@st.composite
def misshapen_specs(draw) -> str:
    """The base spec as YAML text with one field given a value of the wrong shape (a name that
    is a number or a list, a number that is a word or a list), or with a list or a mapping as
    a key."""
    spec = dict(BASE_SPEC)
    where = draw(st.sampled_from(["generator", "alpha", "name", "preset", "metric", "headline",
                                  "aa", "key"]))
    wrong = draw(wrong_shapes)
    if where == "generator":
        spec["grid"] = {"generator": [wrong]}
    elif where == "alpha":
        spec["grid"] = {"generator": ["alpha"], "generator.alpha": [wrong]}
    elif where == "aa":
        spec["controls"] = {"aa": {"generator": wrong, "seed_stream": 1}}
    elif where != "key":
        spec[where] = wrong
    text = yaml.safe_dump(spec, allow_unicode=True)
    if where == "key":
        text += draw(st.sampled_from(["? [a, b]\n: 1\n", "? {a: 1}\n: 2\n"]))
    return text


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=misshapen_specs())
def test_a_misshapen_spec_through_the_cli_exits_2_with_one_line(tmp_path, text):
    """Through `bench sweep SPEC --dry-run`, as a user types it: a valid spec (exit 0) or one
    error line naming the file (exit 2), never a traceback."""
    from typer.testing import CliRunner

    from bench.cli import app

    result = CliRunner().invoke(app, ["sweep", str(_write(tmp_path, text)), "--dry-run"])
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path}"), result.output


def test_fuzzed_teacher_imports_are_refused_in_one_line_and_run_nothing():
    """benchmarks/fuzz.py's import cases, CI-sized: 72 EDM inputs (its 48 hostile pickles among
    them) and 18 broken diffusers folders through `bench teacher import`: no traceback, every
    refusal one line with nothing written, and no pickled call ever runs."""
    import importlib.util
    import random
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "fuzz.py"
    spec = importlib.util.spec_from_file_location("fuzz_bench", path)
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)
    results = fuzz.run_imports(72, random.Random(1))
    for name, counts in results.items():
        assert counts["traceback"] == 0, name
        assert counts["wrote files"] == counts["not one line"] == counts["code ran"] == 0, name
        assert counts["rejected"] > 0, name
    edm = results["EDM pickles (`bench teacher import edm`)"]
    assert edm["valid"] + edm["rejected"] == 72
