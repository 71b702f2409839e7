"""GPU benchmark: what one accelerator does with the engine, as one table (under 10 minutes on
one H100).

Rows:

1. ``cifar10 iteration``: one distillation iteration (critic steps + a student step) of the
   ``cifar10`` preset (31.7M-parameter U-Net, batch 512, 5 critic steps, bf16 autocast,
   ``torch.compile``) on a random-initialised teacher of its architecture (speed needs no
   data, :func:`perf.random_teacher`): seconds per iteration (after a warm-up iteration that
   compiles), FLOPs of one iteration counted by ``torch.utils.flop_counter.FlopCounterMode``
   (eagerly, as :func:`perf.iteration_flops` does), achieved FLOP/s and the model FLOP
   utilisation ``MFU = FLOPs / iteration / (s / iteration) / peak``, ``peak`` the device's
   dense bf16 tensor-core FLOP/s from NVIDIA's data sheets (:data:`PEAK_BF16_DENSE`;
   "unknown" for other devices), and the peak memory ``torch.cuda.max_memory_allocated``.
2. ``text-to-image step``: one iteration of a tiny Stable-Diffusion-layout pipeline (random
   weights, :func:`dibregman.pretrained.diffusers_text.save_tiny_pipeline` with a VAE), imported
   and distilled with guidance ``w = 1.75``: seconds and peak memory ("n/a" on a CPU).
3. ``DDP gradients``: ``W`` processes under torchrun (``python -m torch.distributed.run
   --standalone``) train the ``gmm2d-tiny`` task with the regression and adversarial terms on
   at ``B / W`` rows each, against one process at ``B`` rows (the equivalence
   ``tests/test_distributed.py`` checks, :mod:`dibregman.distributed`): the largest absolute
   difference of any weight of student, EMA student, fake score and ratio network after
   :data:`DDP_STEPS` steps, which is within float rounding when every rank's gradient is the
   global batch's. ``W`` = the GPUs (NCCL) when there are two or more; otherwise, and with
   ``--tiny``, 2 CPU processes (gloo).

``--tiny`` (the default without CUDA) runs everything on the CPU and shrinks row 1 to
``cifar10-tiny`` at batch 8, eager and fp32, so the whole table takes one to two minutes on two
CPU cores. ``--budget-s`` bounds the total: a row that would start after the budget is spent
is printed as skipped; ``--rows`` picks rows. The script exits with status 1 when the DDP row
fails or does not match.

    python benchmarks/gpu.py             # on a GPU
    python benchmarks/gpu.py --tiny      # CPU-sized
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from perf import bench_distiller, iteration_flops, random_teacher, timed

from dibregman import distributed
from dibregman.config import Config, with_overrides
from dibregman.device import resolve_device
from dibregman.distill import Distiller
from dibregman.presets import get_preset
from dibregman.teachers import teacher_for

# Dense (no sparsity) bf16 tensor-core peaks, FLOP/s, from NVIDIA's data sheets; the first
# name contained in torch.cuda.get_device_name() wins, so variants come before their family.
PEAK_BF16_DENSE = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,  # SXM5
    "H200 NVL": 835e12,
    "H200": 989e12,  # SXM
    "A100": 312e12,  # SXM4 and PCIe
}
DDP_STEPS = 10
DDP_TOLERANCE = 1e-4
# The DDP task: tests/test_distributed.py's, non-unit weights with every batch-mean term on.
DDP_OVERRIDES = {"generator.name": "pearson", "train.regression_weight": 1.0,
                 "train.regression_pairs": 64, "train.gan_weight": 0.1}
DDP_NETWORKS = ("student", "student_ema", "fake", "ratio")
ROWS = {"cifar10": "cifar10 iteration", "text": "text-to-image step", "ddp": "DDP gradients"}
TEXT_PROMPTS = ["a red cat", "two dogs", "a blue house", "a tree by a lake"]


@dataclass
class Row:
    """One line of the table; ``None`` prints as "n/a" (or as ``missing`` where given)."""

    name: str
    setting: str
    seconds: float | None = None
    tflops: float | None = None
    mfu: float | str | None = None
    peak_mib: float | None = None
    result: str = ""
    wall: float | None = None  # seconds the whole row took (building, warm-up, timing)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def peak_flops(name: str) -> float | None:
    """The dense bf16 peak of a device named ``name`` (:data:`PEAK_BF16_DENSE`); None if
    unknown."""
    return next((peak for key, peak in PEAK_BF16_DENSE.items() if key in name), None)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float | None:
    """``torch.cuda.max_memory_allocated`` in MiB since the last reset; None on a CPU."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def cifar_iteration(tiny: bool, repeats: int) -> Row:
    """Row 1: seconds, FLOP/s, MFU and peak memory of a ``cifar10`` distillation iteration."""
    cfg = get_preset("cifar10")
    if tiny:
        cfg = with_overrides(get_preset("cifar10-tiny"),
                             {"train.batch_size": 8, "train.regression_pairs": 8})
    device = resolve_device(cfg.device)
    teacher = random_teacher(cfg, device)
    flops = iteration_flops(cfg, teacher)
    distiller = bench_distiller(cfg, teacher)
    distiller.step()  # warm-up: compilation, cuDNN autotuning
    reset_peak_memory(device)
    seconds, _ = timed(distiller.step, device, repeats)
    achieved = flops / seconds
    peak = peak_flops(device_name(device))
    setting = (f"{cfg.preset}, batch {cfg.train.batch_size}, {cfg.precision}, "
               f"{'torch.compile' if cfg.compile else 'eager'}, {flops / 1e9:.1f} GFLOP/iteration")
    return Row("cifar10 iteration", setting, seconds, achieved / 1e12,
               achieved / peak if peak else f"unknown (no peak for {device_name(device)})",
               peak_memory_mib(device))


def text_config(teacher_dir: Path, prompts: Path, clip: Path, device: torch.device,
                batch: int) -> Config:
    """One critic and one student step of an imported text-to-image teacher (guidance 1.75),
    ``clip`` the CLIP folder of its evaluator."""
    return with_overrides(Config(), {
        "teacher": "pretrained_text", "image_teacher.path": str(teacher_dir),
        "image_teacher.sampler_steps": 2, "text.prompts": f"file:{prompts}",
        "text.clip_model": str(clip),
        "text.guidance_scale": 1.75, "ratio.teacher_side": "teacher",
        "train.batch_size": batch, "train.regression_pairs": batch,
        "train.critic_steps_per_generator_step": 1, "train.fake_warmup_steps": 0,
        "train.sigma_min": 0.03, "train.sigma_max": 14.0, "train.sigma_init": 14.0,
        "train.sigma_grid_size": 50, "device": device.type,
        "precision": "bf16" if device.type == "cuda" else "fp32"})


def text_to_image_step(tiny: bool, repeats: int, scratch: Path) -> Row:
    """Row 2: seconds and peak memory of one iteration on a tiny SD-layout pipeline."""
    from dibregman.metrics.clip import save_tiny_clip
    from dibregman.pretrained.diffusers_text import import_diffusers_text, save_tiny_pipeline

    device = torch.device("cpu") if tiny else resolve_device("auto")
    source = save_tiny_pipeline(scratch / "pipeline", vae=True)
    teacher_dir = import_diffusers_text(source, scratch / "teacher")
    prompts = scratch / "prompts.txt"
    prompts.write_text("\n".join(TEXT_PROMPTS) + "\n")
    batch = 4 if tiny else 64
    cfg = text_config(teacher_dir, prompts, save_tiny_clip(scratch / "clip"), device, batch)
    distiller = Distiller(cfg, teacher_for(cfg, device))
    distiller.step()  # warm-up
    reset_peak_memory(device)
    seconds, _ = timed(distiller.step, device, repeats)
    return Row("text-to-image step", f"tiny SD layout (VAE, 4x8x8 latents), batch {batch}, "
               f"{cfg.precision}", seconds, peak_mib=peak_memory_mib(device))


def ddp_config(device: str) -> Config:
    return with_overrides(get_preset("gmm2d-tiny"), {**DDP_OVERRIDES, "device": device})


def trained(cfg: Config, steps: int) -> Distiller:
    """A distiller after its warm-up and ``steps`` iterations (in a process group: this rank's
    share of it)."""
    distiller = Distiller(cfg, teacher_for(cfg, distributed.local_device(
        resolve_device(cfg.device))))
    distiller.warmup()
    for _ in range(steps):
        distiller.step()
    return distiller


def ddp_worker(out: Path, device: str) -> None:
    """One torchrun rank of row 3: :data:`DDP_STEPS` steps of the shared task; its state to
    ``out/rank{r}.pt``."""
    torch.set_num_threads(1)
    distributed.setup(device)
    try:
        state = trained(ddp_config(device), DDP_STEPS).state_dict()
        torch.save({name: state[name] for name in DDP_NETWORKS},
                   out / f"rank{distributed.rank()}.pt")
    finally:
        distributed.teardown()


def max_difference(a: dict, b: dict) -> float:
    """Largest absolute difference of any weight of :data:`DDP_NETWORKS` between two states."""
    return max(float((a[name][key].float() - b[name][key].float()).abs().max())
               for name in DDP_NETWORKS for key in a[name]
               if a[name][key].is_floating_point() and a[name][key].numel())


def ddp_gradients(tiny: bool, timeout: float) -> Row:
    """Row 3: ``W`` ranks at ``B / W`` rows against one process at ``B`` rows: the GPUs under
    NCCL when there are two or more (and not ``tiny``), else 2 CPU processes under gloo."""
    gpus = torch.cuda.device_count()
    world, device = (gpus, "cuda") if gpus >= 2 and not tiny else (2, "cpu")
    backend = "nccl" if device == "cuda" else "gloo"
    with tempfile.TemporaryDirectory() as scratch:
        launched = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc-per-node={world}", __file__, "--ddp-worker", scratch,
                 "--ddp-device", device],
                capture_output=True, text=True, timeout=timeout,
                env={**os.environ, "OMP_NUM_THREADS": "1"})
        except subprocess.TimeoutExpired:
            return Row("DDP gradients", f"{world} x {backend}",
                       result=f"FAILED: torchrun still running when the budget ran out "
                              f"({timeout:.0f} s)")
        seconds = time.perf_counter() - launched
        if done.returncode != 0:
            tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            return Row("DDP gradients", f"{world} x {backend}",
                       result=f"FAILED (exit {done.returncode}): {tail.replace('|', '/')}")
        ranks = [torch.load(Path(scratch) / f"rank{r}.pt", weights_only=True)
                 for r in range(world)]
    single = trained(ddp_config(device), DDP_STEPS).state_dict()
    between_ranks = max(max_difference(ranks[0], other) for other in ranks[1:])
    to_single = max_difference(ranks[0], single)
    verdict = "match" if to_single <= DDP_TOLERANCE and between_ranks == 0 else "MISMATCH"
    batch = ddp_config(device).train.batch_size
    return Row("DDP gradients", f"{world} x {backend}, gmm2d-tiny, {DDP_STEPS} steps, batch "
               f"{batch} = {world} x {batch // world}; torchrun {seconds:.1f} s",
               result=f"{verdict}: max abs(w_DDP - w_one_process) = {to_single:.2e} "
                      f"(tolerance {DDP_TOLERANCE:.0e}), between ranks {between_ranks:.1e}")


def cell(value: float | str | None, fmt: str) -> str:
    if value is None:
        return "n/a"
    return value if isinstance(value, str) else format(value, fmt)


def print_table(rows: list[Row]) -> None:
    print("\n| measurement | setting | s / step | TFLOP/s | MFU | peak memory MiB | result "
          "| row wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row.name} | {row.setting} | {cell(row.seconds, '.4f')} "
              f"| {cell(row.tflops, '.3f')} | {cell(row.mfu, '.1%')} "
              f"| {cell(row.peak_mib, '.0f')} | {row.result} | {cell(row.wall, '.1f')} |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="CPU-sized everything (the default without CUDA)")
    parser.add_argument("--budget-s", type=float, default=540.0,
                        help="total time budget; rows that would start after it are skipped")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed iterations per row (default: 10 on a GPU, 1 tiny)")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS),
                        help="which rows to measure (default: all)")
    parser.add_argument("--ddp-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ddp-device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ddp_worker is not None:
        ddp_worker(args.ddp_worker, args.ddp_device)
        return
    tiny = args.tiny or not torch.cuda.is_available()
    repeats = args.repeats or (1 if tiny else 10)
    torch.backends.cuda.matmul.allow_tf32 = True
    started = time.perf_counter()
    name = device_name(resolve_device("auto"))
    print(f"{'tiny (CPU-sized)' if tiny else 'full'} on {name}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, budget {args.budget_s:.0f} s")

    def left() -> float:
        return args.budget_s - (time.perf_counter() - started)

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        parts = {"cifar10": lambda: cifar_iteration(tiny, repeats),
                 "text": lambda: text_to_image_step(tiny, repeats, Path(scratch)),
                 "ddp": lambda: ddp_gradients(tiny, max(left(), 1.0))}
        for key in args.rows:
            label, measure = ROWS[key], parts[key]
            if left() <= 0:
                rows.append(Row(label, "", result="skipped: time budget spent"))
                continue
            row_started = time.perf_counter()
            rows.append(measure())
            rows[-1].wall = time.perf_counter() - row_started
    print_table(rows)
    print(f"\ntotal {time.perf_counter() - started:.1f} s")
    if any(row.result.startswith(("MISMATCH", "FAILED")) for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
