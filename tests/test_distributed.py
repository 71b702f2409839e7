"""Data parallelism of one run (dibregman.distributed): W processes at B/W rows each follow one
process at B rows, with global weight statistics; only rank 0 writes; bad splits are refused.

Every process group here is gloo on 127.0.0.1 (CPU); the CLI tests go through torchrun
--standalone, as `bench run --nproc-per-node` does.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from dibregman import distributed
from dibregman.config import with_overrides
from dibregman.distill import Distiller
from dibregman.noise import sample_sigmas
from dibregman.presets import get_preset
from dibregman.results import ELAPSED
from dibregman.teachers import teacher_for

# The spawned ranks import this module: the CLI and the run loop are imported where used.

STEPS = 20
# Non-unit weights (pearson: w = r), the regression and adversarial terms: every batch mean.
OVERRIDES = {"generator.name": "pearson", "train.regression_weight": 1.0,
             "train.regression_pairs": 64, "train.gan_weight": 0.1}
NETWORKS = ("student", "student_ema", "fake", "ratio")


def tiny():
    return with_overrides(get_preset("gmm2d-tiny"), OVERRIDES)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe(d: Distiller) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed global batch of noised samples and levels (64 rows) to read weights at."""
    rng = torch.Generator().manual_seed(5)
    x = 2 * torch.randn(d.cfg.train.batch_size, 2, generator=rng)
    t = d.cfg.train
    sigma = sample_sigmas(t.batch_size, d.sigma_grid, t.sigma_quantile_low,
                          t.sigma_quantile_high, rng)
    return x, sigma


def trained(cfg, steps: int, state=None) -> Distiller:
    d = Distiller(cfg, teacher_for(cfg))
    if state is None:
        d.warmup()
    else:
        d.load_state_dict(state)
    for _ in range(steps):
        d.step()
    return d


def _worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank: 20 steps from scratch; the weights of the probe batch's shard; 10 steps from
    a single process's state at step 10; a seed batch, refused."""
    from dibregman.run import run_seed_batch

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed.setup("cpu")
    try:
        cfg = tiny()
        d = trained(cfg, STEPS)
        result = {"state": d.state_dict()}
        x, sigma = probe(d)
        x_shard, sigma_shard = distributed.shard(x), distributed.shard(sigma)
        weights, diagnostics = d.ratio.weights(d.method.h, d.ratio.log_ratio(x_shard, sigma_shard),
                                               sigma_shard)
        result.update(weights=weights, diagnostics=diagnostics,
                      bins=d.ratio.bin_mean_inv_ratio.clone())
        half = torch.load(Path(out) / "half.pt", weights_only=True)
        result["resumed"] = trained(cfg, STEPS // 2, half).state_dict()
        try:
            run_seed_batch(cfg, [0, 1], [Path(out) / "a", Path(out) / "b"])
        except distributed.DataParallelError as err:
            result["seed_batch_error"] = str(err)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        distributed.teardown()


def assert_states_close(a: dict, b: dict, atol: float) -> None:
    for name in NETWORKS:
        for key, value in a[name].items():
            torch.testing.assert_close(value.float(), b[name][key].float(), atol=atol, rtol=0,
                                       msg=f"{name}.{key}")


@pytest.fixture
def one_thread():
    """The toy networks run fastest on one thread (and the ranks use one each)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_two_processes_at_half_the_batch_follow_one_process(tmp_path, one_thread):
    """2 ranks at 32 rows = 1 process at 64 rows to 1e-5 after 20 student steps (regression
    and adversarial terms on); the ranks hold equal states; each rank's weights are its rows of
    the global batch's (global bin statistics and batch mean), which differ from its shard's
    own; a checkpoint of one process continues in two; a seed batch is refused."""
    cfg = tiny()
    reference = trained(cfg, STEPS // 2)
    torch.save(reference.state_dict(), tmp_path / "half.pt")
    for _ in range(STEPS // 2):
        reference.step()
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    assert_states_close(ranks[0]["state"], ranks[1]["state"], atol=0)  # the ranks agree exactly
    single = reference.state_dict()
    assert_states_close(ranks[0]["state"], single, atol=1e-5)
    assert_states_close(ranks[0]["resumed"], single, atol=1e-5)
    assert torch.equal(ranks[0]["state"]["rng"], single["rng"])  # the same random streams
    assert ranks[0]["state"]["generator_step"] == STEPS

    # The weights of a fixed batch: one process on all 64 rows, from rank 0's state.
    whole = Distiller(cfg, reference.teacher)
    whole.load_state_dict(ranks[0]["state"])
    x, sigma = probe(whole)
    weights, diagnostics = whole.ratio.weights(whole.method.h, whole.ratio.log_ratio(x, sigma),
                                               sigma)
    torch.testing.assert_close(torch.cat([r["weights"] for r in ranks]), weights)
    for r in ranks:
        torch.testing.assert_close(r["bins"], whole.ratio.bin_mean_inv_ratio)
        assert r["diagnostics"][0] == pytest.approx(diagnostics[0], rel=1e-5)
    # ... and what rank 0's shard alone would give: the reduction changes both.
    alone = Distiller(cfg, reference.teacher)
    alone.load_state_dict(ranks[0]["state"])
    local, _ = alone.ratio.weights(alone.method.h, alone.ratio.log_ratio(x[:32], sigma[:32]),
                                   sigma[:32])
    assert float(local.mean()) == pytest.approx(1.0, abs=1e-5)
    assert (local - ranks[0]["weights"]).abs().max() > 1e-3
    assert (alone.ratio.bin_mean_inv_ratio - ranks[0]["bins"]).abs().max() > 1e-4

    assert "cannot be split over 2 processes" in ranks[0]["seed_batch_error"]
    assert not (tmp_path / "a").exists()


def test_check_shardable_refuses_what_cannot_be_split():
    distributed.check_shardable(64, members=3, world=1)  # one process: anything goes
    distributed.check_shardable(64, world=4)
    with pytest.raises(distributed.DataParallelError, match="batch_size=65 is not divisible"):
        distributed.check_shardable(65, world=2)
    with pytest.raises(distributed.DataParallelError, match="seed batch"):
        distributed.check_shardable(64, members=2, world=2)
    assert distributed.world_size() == 1 and distributed.is_main()
    rows = torch.arange(6)
    assert distributed.shard(rows) is rows and distributed.all_reduce_sum(rows) is rows


RUN_SETS = ["train.generator_steps=4", "train.fake_warmup_steps=2", "train.batch_size=64",
            "train.critic_steps_per_generator_step=1", "net.hidden=32", "net.depth=2",
            "eval.every=2", "eval.n_curve=128", "eval.n_final=256", "eval.n_pr=128",
            "eval.n_mmd=128", "log_every=2", "checkpoint_every=2"]


def bench_run(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", "run", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def files_of(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_bench_run_on_two_processes_writes_one_run_like_a_single_process(tmp_path):
    """`bench run --nproc-per-node 2` relaunches under torchrun, exits 0 and leaves the files a
    single-process run leaves (rank 0 alone wrote them), with the same records and metrics."""
    from typer.testing import CliRunner

    from bench.cli import app

    sets = [arg for pair in RUN_SETS for arg in ("--set", pair)]
    two, one = tmp_path / "two", tmp_path / "one"
    done = bench_run(["--preset", "gmm2d", *sets, "--nproc-per-node", "2", "--out", str(two)],
                     tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("run directory:") == 1 and "fd_n256" in done.stdout
    result = CliRunner().invoke(app, ["run", "--preset", "gmm2d", *sets, "--out", str(one)])
    assert result.exit_code == 0, result.output
    assert files_of(two) == files_of(one)
    assert json.loads((two / "provenance.json").read_text())["world_size"] == 2

    def records(run_dir):
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]

    assert [r["step"] for r in records(two)] == [r["step"] for r in records(one)] == [0, 2, 4]
    for a, b in zip(records(two), records(one), strict=True):
        assert set(a) == set(b)
        assert {k: a[k] for k in a if k != ELAPSED} == pytest.approx(
            {k: b[k] for k in b if k != ELAPSED}, rel=1e-3, abs=1e-5)
    final_two, final_one = (json.loads((d / "final_metrics.json").read_text())
                            for d in (two, one))
    assert final_two["metrics"] == pytest.approx(final_one["metrics"], rel=1e-3, abs=1e-5)


@pytest.mark.slow  # trains a tiny teacher first: 76 s on this 2-core machine
def test_bench_run_image_preset_on_two_processes(tmp_path):
    """A tiny digits run on two processes: rank 0 trains the teacher into the cache first,
    the others load it; one run directory with the single-process files."""
    out = tmp_path / "digits"
    sets = ["train.generator_steps=2", "train.fake_warmup_steps=1", "train.batch_size=8",
            "train.critic_steps_per_generator_step=1", "train.regression_pairs=8",
            "eval.every=2", "eval.n_curve=32", "eval.n_final=32", "eval.n_pr=32",
            "eval.n_mmd=32", "log_every=2", "checkpoint_every=2"]
    done = bench_run(["--preset", "digits-tiny", *[a for p in sets for a in ("--set", p)],
                      "--nproc-per-node", "2", "--out", str(out)], tmp_path,
                     {"DIBREGMAN_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stdout + done.stderr
    assert {"config.json", "provenance.json", "metrics.jsonl", "final_metrics.json",
            "samples.png", "checkpoint/state.pt"} == files_of(out)
    assert json.loads((out / "final_metrics.json").read_text())["status"] == "finished"


@pytest.mark.slow  # trains a tiny conditional teacher, then two runs: 60 s on 2 cores
def test_a_class_conditional_run_on_two_processes_follows_one_process(tmp_path):
    """Labels are drawn for the global batch and sharded like the latents: a conditional
    digits run on two processes writes the records and per-class metrics of one process."""
    sets = ["image_teacher.class_conditional=true", "train.generator_steps=4",
            "train.fake_warmup_steps=2", "train.batch_size=20",
            "train.critic_steps_per_generator_step=1", "train.regression_pairs=20",
            "eval.every=2", "eval.n_curve=40", "eval.n_final=40", "eval.n_pr=40",
            "eval.n_mmd=40", "log_every=2", "checkpoint_every=2"]
    args = ["--preset", "digits-tiny", *[a for p in sets for a in ("--set", p)]]
    env = {"DIBREGMAN_CACHE": str(tmp_path / "cache")}
    one = bench_run([*args, "--out", str(tmp_path / "one")], tmp_path, env)
    assert one.returncode == 0, one.stdout + one.stderr
    two = bench_run([*args, "--nproc-per-node", "2", "--out", str(tmp_path / "two")], tmp_path,
                    env)
    assert two.returncode == 0, two.stdout + two.stderr

    def records(run_dir):
        return [{k: v for k, v in json.loads(line).items() if k != ELAPSED}
                for line in (run_dir / "metrics.jsonl").open()]

    for a, b in zip(records(tmp_path / "two"), records(tmp_path / "one"), strict=True):
        assert a == pytest.approx(b, rel=1e-3, abs=1e-5)
    finals = [json.loads((tmp_path / d / "final_metrics.json").read_text())["metrics"]
              for d in ("one", "two")]
    assert "class_accuracy_n40" in finals[0]
    assert finals[1] == pytest.approx(finals[0], rel=1e-3, abs=1e-5)


@pytest.mark.slow  # 32x32 colour teacher and classifier trained first: about 2 min on 2 cores
def test_bench_run_cifar10_preset_on_two_processes(tmp_path):
    """`bench run --preset cifar10-tiny --nproc-per-node 2`: the cifar10 architecture (four
    levels, 3x32x32) on gloo, class-conditional, over a folder of 32x32 colour images in two
    class folders standing in for CIFAR-10 (which this offline machine cannot download)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, colour in (("red", 0), ("blue", 2)):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(24):
            pixels = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
            pixels[8:24, 8:24, colour] = 255
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{i}.png")
    sets = [f"image_teacher.dataset=folder:{tmp_path / 'images'}",
            "image_teacher.class_conditional=true", "train.generator_steps=2",
            "train.fake_warmup_steps=1", "train.batch_size=8",
            "train.critic_steps_per_generator_step=1", "eval.every=2", "eval.n_curve=16",
            "eval.n_final=16", "eval.n_pr=16", "eval.n_mmd=16", "log_every=2",
            "checkpoint_every=2"]
    out = tmp_path / "cifar"
    done = bench_run(["--preset", "cifar10-tiny", *[a for p in sets for a in ("--set", p)],
                      "--nproc-per-node", "2", "--out", str(out)], tmp_path,
                     {"DIBREGMAN_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stdout + done.stderr
    final = json.loads((out / "final_metrics.json").read_text())
    assert final["status"] == "finished" and "class_accuracy_n16" in final["metrics"]
    assert json.loads((out / "provenance.json").read_text())["world_size"] == 2


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "train.batch_size=65", "--nproc-per-node", "2"],
     "train.batch_size=65 is not divisible by the 2 processes"),
    (["--nproc-per-node", "0"], "--nproc-per-node"),
])
def test_bad_split_exits_2_before_anything_starts(tmp_path, args, message):
    from typer.testing import CliRunner

    from bench.cli import app

    out = tmp_path / "never"
    result = CliRunner().invoke(app, ["run", "--preset", "gmm2d-tiny", *args, "--out", str(out)])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not out.exists()


def test_a_directory_holding_another_run_exits_2_before_the_processes_start(tmp_path):
    from typer.testing import CliRunner

    from bench.cli import app
    from dibregman.config import to_dict

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(to_dict(with_overrides(get_preset("gmm2d-tiny"),
                                                                        {"seed": 9}))))
    result = CliRunner().invoke(app, ["run", "--preset", "gmm2d-tiny", "--nproc-per-node", "2",
                                      "--out", str(out)])
    assert result.exit_code == 2 and "different config" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
