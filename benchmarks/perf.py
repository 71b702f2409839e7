"""Image benchmark: what a one-step student buys, and what the Bregman weight costs.

Prints, from one process (ratios are measured side by side):

1. teacher (EDM Heun, 35 network evaluations) vs distilled students (1 evaluation) on the same
   latents: samples/s of each, the speed-up, and the domain FD of each against the training
   set on ``--seed-sets`` latent sets (the minimum, as EDM's protocol, and the mean), and
   Inception FID with ``--fid``; for a class-conditional teacher the samples are class-balanced
   (sample ``i`` of class ``i mod C``) and the mean per-class domain FD on set 0 is added;
2. the time of a Di-Bregman student step vs a plain DMD step (weight forced to 1);
3. with ``--mfu`` (a GPU): the model FLOP utilisation of one distillation iteration of a
   preset: FLOPs counted with ``torch.utils.flop_counter`` over one iteration, divided by its
   time and by a bf16 matmul peak measured in the same run; eager, and with ``--compile``
   also with the config's ``compile`` on.

    python benchmarks/perf.py --preset digits --runs runs/digits-reverse_kl-s0 runs/digits-js-s0
    python benchmarks/perf.py --preset digits --set image_teacher.class_conditional=true --runs RUN
    python benchmarks/perf.py --preset cifar10 --mfu --random-data --no-quality
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dibregman.config import from_dict, with_overrides
from dibregman.data import ImageDataset
from dibregman.device import resolve_device
from dibregman.distill import Distiller
from dibregman.labels import evaluation_labels, one_hot
from dibregman.presets import get_preset
from dibregman.run import CHECKPOINT_DIR, CHECKPOINT_FILE, CONFIG_FILE
from dibregman.teachers import teacher_for
from dibregman.teachers.image import ImageTeacher, build_denoiser


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int = 1) -> tuple[float, object]:
    """Seconds per call of ``fn`` (after one warm-up call) and its last result."""
    result = fn()
    synchronise(device)
    started = time.perf_counter()
    for _ in range(repeats):
        result = fn()
    synchronise(device)
    return (time.perf_counter() - started) / repeats, result


def random_teacher(cfg, device: torch.device) -> ImageTeacher:
    """A randomly initialised teacher of the preset's architecture on random data of its
    dataset's shape: enough to measure speed and FLOPs without the dataset."""
    shapes = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
    shape = shapes[cfg.image_teacher.dataset]
    data = ImageDataset("random", torch.rand(4096, *shape) * 2 - 1, torch.arange(4096) % 10, 10)
    return ImageTeacher(build_denoiser(cfg.image_teacher, data), data,
                        cfg.image_teacher).to(device)


def bench_distiller(cfg, teacher) -> Distiller:
    """A :class:`Distiller` whose regression-pair pool (if any) holds one batch: a student step
    draws ``batch_size`` pairs whatever the pool's size, so its work is unchanged, and the
    pool (8192 x 35 teacher evaluations in ``digits``) is not drawn again for every timing."""
    return Distiller(with_overrides(cfg, {"train.regression_pairs": cfg.train.batch_size}),
                     teacher)


def quality(args, cfg, teacher, device: torch.device) -> None:
    """Samples/s on latent set 0, and the domain FD (and Inception FID) of every model on each
    of ``--seed-sets`` latent sets (seeds 0, 1, ...), the same latents for every model. EDM's
    protocol reports the minimum over three seed sets; the mean is printed beside it."""
    evaluator = teacher.build_evaluator(cfg)
    n = args.n
    latent_sets = [torch.randn(n, *teacher.shape, generator=torch.Generator().manual_seed(seed))
                   .to(device) for seed in range(args.seed_sets)]

    classes = teacher.num_classes
    labels = evaluation_labels(n, classes) if classes else None
    rows_y = None if labels is None else one_hot(labels, classes).to(device)
    size = args.batch_size

    def sampler(model):
        def samples(latents):
            with torch.no_grad():
                return torch.cat([model(latents[i:i + size],
                                        None if rows_y is None else rows_y[i:i + size])
                                  for i in range(0, n, size)]).float().cpu()
        return samples

    models = [("teacher (Heun, 35 NFE)", sampler(teacher.sample_from), 1)]
    for run in args.runs:
        run_cfg = from_dict(json.loads((Path(run) / CONFIG_FILE).read_text()))
        distiller = bench_distiller(run_cfg, teacher)
        state = torch.load(Path(run) / CHECKPOINT_DIR / CHECKPOINT_FILE, weights_only=True,
                           map_location=device)
        distiller.load_state_dict(state["distiller"])
        label = f"student {run_cfg.generator.name} (1 NFE, step {distiller.generator_step})"
        models.append((label, sampler(distiller.student_ema), 5))

    rows = []
    for label, samples, repeats in models:
        seconds, first = timed(lambda samples=samples: samples(latent_sets[0]), device, repeats)
        sets = [first] + [samples(latents) for latents in latent_sets[1:]]
        fds = [next(iter(evaluator.curve(x).values())) for x in sets]
        fid = evaluator.fid(first) if args.fid else None
        per_class = evaluator.fd_per_class(first, labels) if classes else None
        rows.append((label, n / seconds, fds, fid, per_class))
    teacher_speed, teacher_fds = rows[0][1], rows[0][2]
    k = args.seed_sets

    def mean(values):
        return sum(values) / len(values)

    extra_header = (" Inception FID (set 0) |" if args.fid else "") + \
        (" per-class domain FD (set 0) |" if classes else "")
    print(f"\n| model | samples/s | speed-up | domain FD (n={n}) on seed sets 0-{k - 1} "
          f"| min | mean | min / teacher's | mean / teacher's |{extra_header}")
    print("|---|---|---|---|---|---|---|---|" + "---|" * (bool(args.fid) + bool(classes)))
    for label, speed, fds, fid, per_class in rows:
        per_set = ", ".join(f"{fd:.3f}" for fd in fds)
        extra = (f" {fid:.3f} |" if args.fid else "") + \
            (f" {per_class:.3f} |" if classes else "")
        print(f"| {label} | {speed:.1f} | {speed / teacher_speed:.1f}x | {per_set} "
              f"| {min(fds):.4f} | {mean(fds):.4f} | {min(fds) / min(teacher_fds):.2f} "
              f"| {mean(fds) / mean(teacher_fds):.2f} |{extra}")


def step_cost(cfg, teacher, device: torch.device, repeats: int) -> None:
    """A Di-Bregman student step (pearson weight) vs a plain DMD step, same config."""
    results = []
    for label, overrides in [("Di-Bregman (pearson)", {"generator.name": "pearson"}),
                             ("DMD (weight 1)", {"method": "dmd"})]:
        distiller = bench_distiller(with_overrides(cfg, overrides), teacher)
        seconds, _ = timed(distiller.student_step, device, repeats)
        results.append((label, seconds))
    print("\n| student step | ms | ratio to DMD |\n|---|---|---|")
    for label, seconds in results:
        print(f"| {label} | {seconds * 1e3:.2f} | {seconds / results[1][1]:.3f} |")


def matmul_peak(device: torch.device) -> float:
    """Measured bf16 matmul FLOP/s (the MFU denominator): 8192^3 on a GPU, 1024^3 on a CPU."""
    size = 8192 if device.type == "cuda" else 1024
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    seconds, _ = timed(lambda: a @ b, device, repeats=20)
    return 2 * size**3 / seconds


def iteration_flops(cfg, teacher) -> int:
    """FLOPs of one distillation iteration (critic steps + a student step), counted eagerly."""
    from torch.utils.flop_counter import FlopCounterMode

    distiller = bench_distiller(with_overrides(cfg, {"compile": False}), teacher)
    counter = FlopCounterMode(display=False)
    with counter:
        distiller.step()
    return counter.get_total_flops()


def mfu(cfg, teacher, device: torch.device, repeats: int, compile_: bool) -> None:
    """MFU of the preset's iteration, eager and (with ``compile_``) under ``torch.compile``."""
    peak = matmul_peak(device)
    flops = iteration_flops(cfg, teacher)
    print(f"\nbf16 matmul peak (measured): {peak / 1e12:.1f} TFLOP/s")
    print("\n| preset | variant | params (student) | batch | critic steps | FLOPs / iteration "
          "| s / iteration | achieved TFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for compiled in [False, True] if compile_ else [False]:
        distiller = bench_distiller(with_overrides(cfg, {"compile": compiled}), teacher)
        distiller.step()  # warm-up: cuDNN autotuning, compilation
        seconds, _ = timed(distiller.step, device, repeats)
        params = sum(p.numel() for p in distiller.student.parameters())
        print(f"| {cfg.preset} | {'torch.compile' if compiled else 'eager'} "
              f"| {params / 1e6:.1f}M | {cfg.train.batch_size} "
              f"| {cfg.train.critic_steps_per_generator_step} | {flops / 1e12:.2f} T "
              f"| {seconds:.4f} | {flops / seconds / 1e12:.1f} | {flops / seconds / peak:.1%} |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits")
    parser.add_argument("--runs", nargs="*", default=[], help="finished `bench run` dirs")
    parser.add_argument("--n", type=int, default=1797, help="samples per model")
    parser.add_argument("--seed-sets", type=int, default=3,
                        help="latent sets (seeds 0, 1, ...) each FD is measured on")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--set", nargs="*", default=[], help="config overrides KEY=VALUE")
    parser.add_argument("--fid", action="store_true", help="also Inception FID")
    parser.add_argument("--mfu", action="store_true", help="model FLOP utilisation (GPU)")
    parser.add_argument("--compile", action="store_true",
                        help="--mfu also with torch.compile")
    parser.add_argument("--random-data", action="store_true",
                        help="random-initialised teacher on random data (speed and FLOPs only)")
    parser.add_argument("--no-quality", action="store_true")
    args = parser.parse_args()
    cfg = with_overrides(get_preset(args.preset), dict(s.split("=", 1) for s in args.set))
    device = resolve_device(cfg.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    teacher = random_teacher(cfg, device) if args.random_data else teacher_for(cfg, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"preset {cfg.preset} on {name}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    if not args.no_quality:
        quality(args, cfg, teacher, device)
    step_cost(cfg, teacher, device, args.repeats)
    if args.mfu:
        mfu(cfg, teacher, device, args.repeats, args.compile)


if __name__ == "__main__":
    main()
