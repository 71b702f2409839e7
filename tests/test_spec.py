"""Sweep specs: expansion, and one clear error (file, key path, valid choices) per mistake."""

from pathlib import Path

import pytest
import yaml

from bench.spec import SpecError, arm_name, load_spec, trial_name

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BASE = {"name": "t", "preset": "gmm2d-tiny", "grid": {"generator": ["reverse_kl"]},
        "metric": "fd_n256"}


def test_grid_union_and_seeds_expand_in_order(tmp_path):
    spec = load_spec(write(tmp_path, {**BASE, "seeds": [0, 1], "grid": [
        {"generator": ["reverse_kl", "pearson"]},
        {"generator": ["alpha"], "generator.alpha": [0.5, 2.0], "train.lr": [1e-3]},
    ]}))
    names = [trial_name(t) for t in spec.trials()]
    assert names == ["reverse_kl-s0", "reverse_kl-s1", "pearson-s0", "pearson-s1",
                     "alpha-a0.5-lr=0.001-s0", "alpha-a0.5-lr=0.001-s1",
                     "alpha-a2-lr=0.001-s0", "alpha-a2-lr=0.001-s1"]
    assert spec.trials()[4] == {"generator.name": "alpha", "generator.alpha": 0.5,
                                "train.lr": 1e-3, "seed": 0}


def test_shipped_specs_are_valid():
    for path in sorted(SWEEPS.glob("*.yaml")):
        spec = load_spec(path)
        assert spec.name == path.stem


def test_default_sweep_holds_one_arm_per_method_and_both_controls():
    """Every named generator is an arm (the alpha and power families, and hellinger, which is
    alpha 0.5, are left to the alpha search); no two arms are the same method (no warnings);
    the A/A control is reverse_kl on another random stream, the positive control a mild
    learning-rate change; 16 seeds; the confirmatory family is declared."""
    spec = load_spec(SWEEPS / "divergences.yaml")
    names = {t["generator.name"] for t in spec.trials()}
    from dibregman.bregman import generator_names
    from dibregman.equivalence import known_equivalences

    covered = names | {label.split()[0] for group in known_equivalences()
                       if any(member.split()[0] in names for member in group)
                       for label in group}
    assert covered >= set(generator_names()) - {"alpha", "power", "hellinger"}
    assert spec.warnings == []
    assert spec.controls == {"aa": "reverse_kl seed_stream=1",
                             "positive": "reverse_kl train.lr=0.0007"}
    assert len(spec.seeds) == 16 and spec.seed_batch == 16 and len(spec.grid) == 10
    assert spec.budgets == (50, 100, 200, 400)
    assert spec.confirmatory.budgets == (100, 400) and spec.confirmatory.time_to_target


@pytest.mark.parametrize(("change", "message"), [
    ({"grdi": {}}, "grdi: unknown key; valid: name, preset, set, grid"),
    ({"preset": "gmm3d"},
     "preset: unknown preset 'gmm3d'; valid: cifar10, cifar10-edm, cifar10-paper, cifar10-tiny"),
    ({"grid": {"generator": ["kl"]}}, "grid: kl-s0: generator.name / generator.alpha: unknown "
                                      "Bregman generator 'kl'; valid: alpha"),
    ({"grid": {"train.lrr": [1]}}, "grid.train.lrr: unknown config key; valid: generator"),
    ({"grid": {}}, "grid: must be a non-empty mapping"),
    ({"grid": []}, "grid: is empty"),
    ({"grid": {"generator": []}}, "grid.generator: must be a non-empty list"),
    ({"grid": {"seed": [1, 2]}}, "grid.seed: seeds are repetitions"),
    ({"set": {"train.lr": "fast"}}, "set: bad value 'fast' for train.lr: expected a number"),
    ({"seeds": "0"}, "seeds: '0' must be a non-empty list of integers"),
    ({"metric": "fd_n10000"}, "metric: 'fd_n10000' is not reported during training; valid"),
    ({"mode": "minimum"}, "mode: 'minimum'; valid: min, max"),
    ({"resources": {"tpu": 1}}, "resources.tpu: unknown resource; valid: cpu, gpu"),
    ({"scheduler": {"type": "pbt"}}, "scheduler.type: 'pbt'; valid: asha"),
    ({"search": {"num_samples": 2, "space": {"generator.alpha": {"uniform": [0, 1]}}}},
     "grid: a spec has either grid or search"),
    ({"grid": {"generator": ["power"], "generator.alpha": [-1.0]}},
     "grid: power-a-1-s0: generator.name / generator.alpha"),
])
def test_mistakes_name_file_key_and_choices(tmp_path, change, message):
    path = write(tmp_path, {**BASE, **change})
    with pytest.raises(SpecError) as info:
        load_spec(path)
    text = str(info.value)
    assert text.startswith(str(path) + ": ")
    assert message in text


@pytest.mark.parametrize(("space", "message"), [
    ({"generator.alpha": {"normal": [0, 1]}}, "unknown domain 'normal'; valid: loguniform"),
    ({"train.lr": {"loguniform": [0, 1]}}, "needs low > 0"),
    ({"train.lr": {"uniform": [1, 0]}}, "needs [low, high] with low < high"),
    ({"generator.alpha": {"uniform": [-1.0, 1.0]}}, "search.space.generator.alpha: value -1.0"),
])
def test_search_space_errors(tmp_path, space, message):
    data = {**BASE, "set": {"generator": "power"},
            "search": {"num_samples": 3, "space": space}}
    del data["grid"]
    with pytest.raises(SpecError, match=None) as info:
        load_spec(write(tmp_path, data))
    assert message in str(info.value)


def test_search_takes_one_seed(tmp_path):
    data = {**BASE, "seeds": [0, 1],
            "search": {"num_samples": 3, "space": {"train.lr": {"loguniform": [1e-4, 1e-3]}}}}
    del data["grid"]
    with pytest.raises(SpecError, match="a search sweep takes one seed"):
        load_spec(write(tmp_path, data))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="no such sweep spec file"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrid:\n  generator: [a\n\tb: 1\n")
    with pytest.raises(SpecError, match=r"not valid YAML at line 4, column 1: ") as err:
        load_spec(bad)
    assert "\n" not in str(err.value)  # one line, however PyYAML words it


def test_a_control_with_an_unknown_generator_is_a_spec_error(tmp_path):
    data = {**BASE, "controls": {"aa": {"generator": "alph", "generator.alpha": 1.0}}}
    with pytest.raises(SpecError, match=r"controls.aa.generator: unknown Bregman generator 'alph'"):
        load_spec(write(tmp_path, data))


def test_the_spec_seed_batch_cuts_the_seeds_into_trials(tmp_path):
    spec = load_spec(write(tmp_path, {**BASE, "seeds": [0, 1, 2, 3, 4], "seed_batch": 2}))
    assert spec.seed_batches() == [[0, 1], [2, 3], [4]]
    for bad in (0, 6, 1.5, True):
        with pytest.raises(SpecError, match="seed_batch"):
            load_spec(write(tmp_path, {**BASE, "seeds": [0, 1, 2, 3, 4], "seed_batch": bad}))


JS_LOGISTIC = ("grid: jensen_shannon and logistic are the same method under batch-mean weight "
               "normalisation (weights equal up to a constant): {} of {} trials duplicate others")


@pytest.mark.parametrize(("change", "warnings"), [
    ({"grid": {"generator": ["jensen_shannon", "logistic"]}}, [JS_LOGISTIC.format(3, 6)]),
    ({"grid": {"generator": ["reverse_kl", "pearson"]}}, []),
    ({"grid": {"generator": ["jensen_shannon", "logistic"]},
      "set": {"ratio.weight_normalize": False}}, []),
    ({"grid": {"generator": ["jensen_shannon", "logistic"], "ratio.weight_normalize": [False]}},
     []),
    ({"grid": {"generator": ["jensen_shannon", "logistic"],
               "ratio.weight_normalize": [True, False]}}, [JS_LOGISTIC.format(3, 12)]),
    ({"grid": {"generator": ["jensen_shannon", "logistic"], "train.lr": [1e-3, 2e-3]}},
     [JS_LOGISTIC.format(6, 12)]),
    ({"grid": [{"generator": ["jensen_shannon"]}, {"generator": ["logistic"], "train.lr": [2e-3]}]},
     []),
    ({"grid": [{"generator": ["pearson", "hellinger"]},
               {"generator": ["alpha"], "generator.alpha": [2.0, 0.5, 0.6]},
               {"generator": ["power"], "generator.alpha": [1.0]}]},
     ["grid: pearson, alpha α=2 and power α=1 are the same method under batch-mean weight "
      "normalisation (weights equal up to a constant): 6 of 18 trials duplicate others",
      "grid: hellinger and alpha α=0.5 are the same method under batch-mean weight "
      "normalisation (weights equal up to a constant): 3 of 18 trials duplicate others"]),
    ({"grid": {"generator": ["pearson"], "generator.alpha": [0.5, 2.0]}},
     ["grid: pearson is the same run at several points (equal up to generator.alpha, which "
      "only alpha and power use): 3 of 6 trials duplicate others"]),
])
def test_equivalent_arms_warn_without_refusing_the_spec(tmp_path, change, warnings):
    spec = load_spec(write(tmp_path, {**BASE, "seeds": [0, 1, 2], **change}))
    assert spec.warnings == warnings
    assert len(spec.trials()) == 3 * len(spec.grid)  # every arm is kept


def test_sweep_dry_run_prints_the_warning_and_exits_0(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from bench.cli import app

    path = write(tmp_path, {**BASE, "seeds": [0, 1, 2],
                            "grid": {"generator": ["jensen_shannon", "logistic"]}})
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["sweep", str(path), "--dry-run"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "warning: " + JS_LOGISTIC.format(3, 6) in text
    assert "jensen_shannon and logistic" in " ".join(result.stderr.split())  # on stderr
    assert "6 trials" in text and "logistic-s2" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]  # nothing started


def test_controls_become_the_last_grid_arms_with_their_own_names(tmp_path):
    spec = load_spec(write(tmp_path, {**BASE, "grid": {"generator": ["reverse_kl", "pearson"]},
                                      "controls": {"aa": {"generator": "reverse_kl",
                                                          "seed_stream": 1},
                                                   "positive": {"generator": "reverse_kl",
                                                                "train.lr": 7e-4}}}))
    assert spec.controls == {"aa": "reverse_kl seed_stream=1",
                             "positive": "reverse_kl train.lr=0.0007"}
    assert [arm_name(point) for point in spec.grid] == [
        "reverse_kl", "pearson", "reverse_kl seed_stream=1", "reverse_kl train.lr=0.0007"]
    assert spec.warnings == []  # the A/A control is the reference's method on purpose


def test_an_aa_control_may_be_an_equivalent_generator_on_another_stream(tmp_path):
    spec = load_spec(write(tmp_path, {**BASE, "controls": {"aa": {
        "generator": "alpha", "generator.alpha": 1.0, "seed_stream": 2}}}))
    assert spec.controls == {"aa": "alpha α=1 seed_stream=2"}


@pytest.mark.parametrize("controls, message", [
    ({"aa": {"generator": "reverse_kl"}}, "controls.aa: 'reverse_kl' is already a grid arm"),
    ({"placebo": {"generator": "alpha"}}, "controls.placebo: unknown key; valid: aa, positive"),
    ({"aa": {}}, "controls.aa: needs at least one config key"),
    ({"aa": {"generator": "alpha", "generator.alpha": 1.0}},
     "controls.aa: 'alpha α=1' must be the reference's method, reverse_kl .* on another random "
     "stream"),
    ({"aa": {"generator": "pearson", "seed_stream": 1}},
     "controls.aa: 'pearson seed_stream=1' must be the reference's method"),
    ({"aa": {"generator": "reverse_kl", "seed_stream": 1, "train.lr": 2e-3}},
     "controls.aa: .* must be the reference's method"),
    ({"positive": {"train.lr": -1.0}}, "controls.positive: lr=-1-s0: train.lr must be > 0"),
])
def test_bad_controls_are_rejected(tmp_path, controls, message):
    with pytest.raises(SpecError, match=message):
        load_spec(write(tmp_path, {**BASE, "controls": controls}))


def test_arm_name_shows_every_key_but_the_seed():
    assert arm_name({"generator.name": "alpha", "generator.alpha": 0.5, "seed": 3}) == "alpha α=0.5"
    assert arm_name({"generator.name": "reverse_kl", "train.lr": 3e-4, "seed": 0}) == (
        "reverse_kl train.lr=0.0003")


def test_headline_names_a_final_metric_of_the_preset(tmp_path):
    spec = load_spec(write(tmp_path, {**BASE, "headline": "off_mode_n512"}))
    assert spec.headline == "off_mode_n512"
    assert load_spec(write(tmp_path, BASE)).headline is None
    with pytest.raises(SpecError, match="headline: 'fd_n256' is not a final metric of preset "
                                        "gmm2d-tiny; valid: fd_n512"):
        load_spec(write(tmp_path, {**BASE, "headline": "fd_n256"}))
    assert arm_name({"generator.alpha": 0.5, "train.lr": 1e-3}) == (
        "generator.alpha=0.5 train.lr=0.001")  # a search point: no generator name


@pytest.mark.parametrize(("text", "message"), [
    (b"name: t\xff\n", "not UTF-8 text (invalid start byte at byte 7)"),
    (b"name: t\nname: u\n", "duplicate key 'name'"),
    (b"grid: {generator: [reverse_kl]}\ngrid: {generator: [pearson]}\n",
     "duplicate key 'grid'"),
    (("x: " + "[" * 2000 + "]" * 2000 + "\n").encode(), "nested too deeply"),
    (b"name: t\nseeds: [18446744073709551616]\n",
     "seeds[0]: 18446744073709551616 is outside the 64-bit integer range"),
    (b"name: t\nresources: {cpu: .nan}\n", "resources.cpu: nan must be a finite number"),
    (b"name: t\ntime_budget_s: .nan\n", "time_budget_s: nan must be a finite number"),
])
def test_malformed_files_give_one_clear_error(tmp_path, text, message):
    """What a fuzzer found: each of these raised a traceback (or, for repeated keys, silently
    kept the last); now each is one SpecError naming the file and the problem."""
    path = tmp_path / "spec.yaml"
    path.write_bytes(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value).startswith(str(path)) and message in str(info.value)


@pytest.mark.parametrize(("change", "message"), [
    ({"name": "x" * 101}, "name: 'xxxx"),
    ({"seeds": [-1]}, "seed must be in [0, 2^32)"),
    ({"seeds": [2**32]}, "seed must be in [0, 2^32)"),
])
def test_out_of_range_fields_are_refused(tmp_path, change, message):
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, {**BASE, **change}))
    assert message in str(info.value)


def test_sampler_seed_must_fit_optuna(tmp_path):
    data = {**BASE, "search": {"num_samples": 2, "sampler_seed": -1,
                               "space": {"train.lr": {"loguniform": [1e-4, 1e-3]}}}}
    del data["grid"]
    with pytest.raises(SpecError, match=r"sampler_seed: -1 must be an integer in \[0, 2\^32\)"):
        load_spec(write(tmp_path, data))


def test_trial_names_are_file_names():
    name = trial_name({"generator.name": "reverse_kl", "image_teacher.dataset": "folder:/data/x",
                       "seed": 3})
    assert name == "reverse_kl-dataset=folder__data_x-s3"
    assert len(trial_name({"generator.name": "a" * 500, "seed": 1})) == 123


@pytest.mark.parametrize(("change", "message"), [
    ({"workers_per_trial": 0}, "workers_per_trial: 0 must be an integer >= 1"),
    ({"workers_per_trial": "2"}, "workers_per_trial: '2' must be an integer >= 1"),
    ({"workers_per_trial": True}, "workers_per_trial: True must be an integer >= 1"),
    ({"workers_per_trial": 2, "seeds": [0, 1], "seed_batch": 2},
     "workers_per_trial: 2 workers split one run; with seed_batch > 1"),
    ({"workers_per_trial": 2, "scheduler": {"type": "asha"}},
     "workers_per_trial: 2 workers train one run data-parallel; a scheduler is not supported"),
    ({"workers_per_trial": 3}, "workers_per_trial: train.batch_size=64 is not divisible by the "
                               "3 workers"),
    ({"workers_per_trial": 2, "resources": {"gpu": 0.5}},
     "resources.gpu: 0.5: with workers_per_trial: 2 each worker needs whole GPUs"),
    ({"workers_per_trial": 2, "grid": None,
      "search": {"num_samples": 2, "space": {"train.batch_size": {"choice": [64, 128]}}}},
     "search.space.train.batch_size: cannot be searched with workers_per_trial: 2"),
])
def test_workers_per_trial_refusals_name_the_key(tmp_path, change, message):
    path = write(tmp_path, {k: v for k, v in {**BASE, **change}.items() if v is not None})
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(err.value).startswith(f"{path}: {message}")
    assert "\n" not in str(err.value)


def test_workers_per_trial_defaults_to_one_and_takes_a_run_per_trial(tmp_path):
    assert load_spec(write(tmp_path, BASE)).workers_per_trial == 1
    spec = load_spec(write(tmp_path, {**BASE, "workers_per_trial": 2, "seeds": [0, 1]}))
    assert spec.workers_per_trial == 2 and spec.seed_batches() == [[0], [1]]


def test_budgets_and_the_confirmatory_family_are_declared_in_the_spec(tmp_path):
    spec = load_spec(write(tmp_path, {**BASE, "budgets": [2, 4, 6],
                                      "confirmatory": {"budgets": [4, 6],
                                                       "time_to_target": True},
                                      "target": 1.2}))
    assert spec.budgets == (2, 4, 6)
    assert spec.confirmatory.budgets == (4, 6) and spec.confirmatory.time_to_target
    assert spec.target == 1.2
    assert spec.base_config().eval.budgets == (2, 4, 6)  # every trial measures them
    default = load_spec(write(tmp_path, {**BASE, "budgets": [2, 6]}))
    assert default.confirmatory.budgets == (6,) and not default.confirmatory.time_to_target


@pytest.mark.parametrize(("change", "message"), [
    ({"budgets": [4, 2]}, "budgets: .* must be increasing generator steps from 1 to 6"),
    ({"budgets": [2, 60]}, "budgets: .* from 1 to 6"),
    ({"budgets": "2"}, "budgets: '2' must be increasing"),
    ({"budgets": [2, 4], "confirmatory": {"budgets": [3]}},
     r"confirmatory.budgets: \[3\] must be distinct steps among budgets \[2, 4\]"),
    ({"budgets": [4], "confirmatory": {"time_to_target": True}},
     "confirmatory.time_to_target: needs at least two budgets"),
    ({"confirmatory": {"budget": [2]}}, "confirmatory.budget: unknown key; valid: budgets, "
                                        "time_to_target"),
    ({"target": 0.9}, "target: 0.9 must be a number >= 1"),
])
def test_bad_budgets_and_families_are_refused(tmp_path, change, message):
    with pytest.raises(SpecError, match=message):
        load_spec(write(tmp_path, {**BASE, **change}))


def test_a_mixture_much_harder_than_its_preset_warns_before_anything_runs(tmp_path):
    spec = load_spec(write(tmp_path, {**BASE, "set": {"mixture.modes": 25,
                                                      "mixture.layout": "grid",
                                                      "mixture.std": 0.05,
                                                      "mixture.weights": []}}))
    (warning,) = spec.warnings
    assert "harder than preset gmm2d-tiny's" in warning
    assert "modes (25 against 8)" in warning and "std (0.05 against 0.2)" in warning
    assert "train.generator_steps" in warning
    assert load_spec(write(tmp_path, BASE)).warnings == []


def test_a_family_that_cannot_reach_significance_warns_with_the_seeds_it_needs(tmp_path):
    """Three arms against reverse KL at two confirmatory budgets: a family of 6 tests. With 6
    seeds the smallest sign-flip p is 2/64 and Holm makes it 6 x 2/64 >= 0.05; 8 seeds reach
    6 x 2/256 < 0.05."""
    grid = {"generator": ["reverse_kl", "pearson", "neyman", "forward_kl"]}
    family = {**BASE, "grid": grid, "budgets": [3, 6], "confirmatory": {"budgets": [3, 6]}}
    few = load_spec(write(tmp_path, {**family, "seeds": list(range(6))}))
    assert [w for w in few.warnings if "cannot reach significance" in w] == [
        "the confirmatory family cannot reach significance: with 6 paired seeds the sign-flip "
        "test's smallest p is 2/2^6 = 0.031, and Holm over the family's 6 tests makes it 0.19 "
        ">= 0.05; use at least 8 seeds, or declare a smaller family"]
    enough = load_spec(write(tmp_path, {**family, "seeds": list(range(8))}))
    assert not [w for w in enough.warnings if "cannot reach significance" in w]
