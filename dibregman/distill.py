"""The shared trainer: one run's (or a seed batch's) networks, draws, updates and checkpoints.

A :class:`Distiller` step is ``critic_steps_per_generator_step`` critic updates, then one student
update. What each update minimises is the method's (:mod:`dibregman.methods`, config key
``method``: Di-Bregman or DMD); the trainer owns everything around it, the same for every
method:

* the random draws of a step (:meth:`Distiller.critic_batch`, :meth:`Distiller.student_batch`),
  every member's from its own generators, sharded once per batch;
* the optimiser steps with per-member gradient clipping and the non-finite guard
  (:func:`apply_update`), the student's EMA, divergence, evaluation counts;
* checkpoints (one plain-run state per member) and the samples evaluations read.

With a class-conditional teacher (``teacher.num_classes = C > 0``, :mod:`dibregman.labels`)
every batch carries class-balanced one-hot labels ``y``: the student draws ``G(z, y)``, the
teacher side of the ratio estimator holds images of the same classes, and every network sees
``y``; the student therefore matches each class's distribution, ``q(x | y)`` to ``p(x | y)``.

Nothing here touches files or global RNG: all randomness comes from ``torch.Generator``s
seeded by ``cfg.seed``, so a run is a deterministic function of its config.

A *seed batch* trains ``K`` runs that differ only in their seed in one process
(:mod:`dibregman.members`): networks with stacked parameters, member-major batches of
``K * B`` rows, and one generator pair per member drawing exactly what that run draws alone.
Member ``k`` of a batch therefore follows run ``k`` alone up to floating-point rounding (a
batched matrix product sums in another order); ``tests/test_members.py`` checks it.

A run may also be split over ``W`` processes (data parallelism, :mod:`dibregman.distributed`):
``train.batch_size`` stays the global batch, every rank draws the global batch's random numbers
from the run's own generators and keeps its shard of ``B / W`` rows, gradients are averaged over
ranks before the non-finite guard and clipping, and the weight pipeline's statistics are the
global batch's. The state is a single process's at every step, so ``W`` processes follow one
up to float rounding (``tests/test_distributed.py``) and a checkpoint resumes at any ``W``.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from dibregman import distributed
from dibregman.config import Config
from dibregman.density import oracle_log_ratio
from dibregman.device import adamw, autocast, prepare_modules, resolve_device
from dibregman.labels import balanced_labels, evaluation_labels
from dibregman.members import (
    load_member_state_dicts,
    member_grad_norms,
    member_means,
    member_module,
    member_optimizer_state,
    member_state_dict,
    per_member,
    stack_members,
    stack_optimizer_states,
)
from dibregman.methods import METHODS, CriticBatch, Networks, StudentBatch
from dibregman.networks import ema_update
from dibregman.noise import karras_sigmas, sample_sigmas
from dibregman.ratio import RatioEstimator
from dibregman.ratio_check import LogRatioFn
from dibregman.results import STEP_RECORD_KEY, Status
from dibregman.students import build_networks, regression_pairs
from dibregman.teachers import Teacher

_NETWORKS = ("student", "student_ema", "fake")
_OPTIMIZERS = ("opt_student", "opt_fake", "opt_ratio")


def stream_seed(seed: int, stream: int) -> int:
    """The seed a run's generators derive from (``2 s`` and ``2 s + 1``): ``seed`` itself on
    stream 0 (every run before streams existed); on stream ``k >= 1`` a 31-bit hash of
    ``(seed, k)`` (SHA-256), so that another stream of a seed shares no generator with it or,
    but for a chance of about one in 2^31 per seed, with any stream-0 run of the sweep
    (``config.seed_stream``). Hashed, not offset: torch's CPU generator keeps only the low
    32 bits of a seed, so ``seed + k 2^32`` would draw exactly stream 0's numbers."""
    if stream == 0:
        return seed
    return int(hashlib.sha256(f"{seed}/{stream}".encode()).hexdigest(), 16) % 2**31


def apply_update(losses: Tensor, optimizer: torch.optim.Optimizer, module: torch.nn.Module,
                 clip: float, frozen: Tensor | None = None) -> Tensor:
    """Backpropagate the members' losses and step ``optimizer``, each member's gradient norm
    clipped to ``clip`` (as ``torch.nn.utils.clip_grad_norm_``), skipping members whose
    gradient is non-finite or that are ``frozen`` (a non-finite loss gives a non-finite norm,
    so one host sync covers both).

    Args:
        losses: ``(K,)`` each member's loss (``K = 1`` for a plain module).
        optimizer: over ``module``'s parameters (stacked ``(K, *shape)`` for ``K > 1``).
        module: the network.
        clip: the per-member gradient-norm bound (``inf``: none).
        frozen: ``(K,)`` members that must not move (diverged ones); None: none.

    Returns:
        ``(K,)`` bool: which members stepped. A skipped member's parameters and optimiser
        moments are left as they were (Adam's shared step count still advances).

    Data-parallel, ``losses`` are this rank's shard means and the gradients are averaged over
    ranks right after the backward pass, so the guard and the clipping see the global batch's
    gradient and every rank takes the same step.
    """
    members = losses.numel()
    optimizer.zero_grad(set_to_none=True)
    losses.sum().backward()
    params = [p for p in module.parameters() if p.grad is not None]
    distributed.average_gradients(params)
    norms = member_grad_norms(params, members)
    stepped = torch.isfinite(norms)
    if frozen is not None:
        stepped &= ~frozen.to(stepped.device)
    flags = stepped.tolist()
    if not any(flags):
        optimizer.zero_grad(set_to_none=True)
        return stepped
    if not math.isinf(clip):
        coef = (clip / (norms + 1e-6)).clamp(max=1.0)
        for p in params:
            p.grad.mul_(per_member(coef, members, p))
    if all(flags):
        optimizer.step()
        return stepped
    skipped = ~stepped
    kept = []
    for p in params:
        p.grad[skipped] = 0
        state = optimizer.state.get(p, {})
        kept.append((p.detach()[skipped].clone(),
                     {name: v[skipped].clone() for name, v in state.items() if v.ndim > 0}))
    optimizer.step()
    with torch.no_grad():
        for p, (rows, state) in zip(params, kept, strict=True):
            p[skipped] = rows
            for name, value in state.items():
                optimizer.state[p][name][skipped] = value
    return stepped


class Distiller:
    """Student, fake score, ratio estimator and their optimisers for one run, or for a seed
    batch of runs that differ only in their seed.

    Args:
        cfg: the run's config (its ``seed`` is ignored when ``seeds`` is given).
        teacher: a frozen teacher (vector or image), already on ``cfg.device``.
        seeds: the batch's seeds, one member each (None: ``[cfg.seed]``, a plain run).

    Raises:
        DataParallelError: in a process group of ``W > 1`` ranks, a seed batch or a
            ``train.batch_size`` that ``W`` does not divide.
    """

    def __init__(self, cfg: Config, teacher: Teacher, seeds: Sequence[int] | None = None) -> None:
        self.cfg, self.teacher, train = cfg, teacher, cfg.train
        self.seeds = list(seeds) if seeds is not None else [cfg.seed]
        self.members = len(self.seeds)
        self.num_classes = teacher.num_classes
        distributed.check_shardable(train.batch_size, self.members)
        self.device = distributed.local_device(resolve_device(cfg.device))
        streams = [stream_seed(seed, cfg.seed_stream) for seed in self.seeds]
        init_rngs = [torch.Generator().manual_seed(2 * seed) for seed in streams]
        self.rngs = [torch.Generator(device=self.device).manual_seed(2 * seed + 1)
                     for seed in streams]
        built = [build_networks(cfg, teacher, rng) for rng in init_rngs]
        self.student, self.fake, ratio_net = (stack_members([b[i] for b in built])
                                              for i in range(3))
        # The pairs' latents continue each initialisation stream: never the evaluation latents.
        self.pairs = None
        if train.regression_weight > 0:
            pairs = [regression_pairs(teacher, train.regression_pairs, rng, self.device)
                     for rng in init_rngs]
            self.pairs = tuple(None if side[0] is None else torch.cat(side)
                               for side in zip(*pairs, strict=True))
        self.student_ema = copy.deepcopy(self.student).requires_grad_(False)
        self.ratio = RatioEstimator(ratio_net, cfg.ratio, train.sigma_min, train.sigma_max,
                                    self.members)
        for module in (self.student, self.student_ema, self.fake, self.ratio):
            module.to(self.device)
        prepare_modules([self.student, self.fake, self.ratio.network, teacher.network],
                        self.device, cfg.compile)
        self.autocast = autocast(self.device, cfg.precision)
        self.oracle_samples = 0 if self.ratio.fitted else cfg.ratio.oracle_samples
        self.method = METHODS[cfg.method](cfg, Networks(
            self.student, self.fake, self.ratio, teacher, self.autocast, self.members, self.pairs))
        opt = {"betas": train.betas, "weight_decay": train.weight_decay, "device": self.device}
        self.opt_student = adamw(self.student, train.lr, **opt)
        self.opt_fake = adamw(self.fake, train.lr * train.fake_lr_scale, **opt)
        self.opt_ratio = adamw(self.ratio, train.lr * train.ratio_lr_scale, **opt)
        self.sigma_grid = karras_sigmas(
            train.sigma_grid_size, train.sigma_min, train.sigma_max, train.rho
        ).to(self.device)
        self.generator_step = 0
        self.member_steps = [0] * self.members  # frozen at a member's divergence
        self.nonfinite_streak = [0] * self.members
        self.nonfinite_total = [0] * self.members
        self.status = [Status.RUNNING] * self.members

    # -- a step's random draws: every member's from its own generator, then this rank's rows --
    # Data-parallel (one member): ``n`` is the global batch; every rank draws all of it, so the
    # generators advance as in one process, and keeps its shard (``_shard``, once per batch).

    def _labels(self, n: int, rng: torch.Generator) -> Tensor | None:
        """The teacher's labels of ``n`` class-balanced condition ids; None (nothing drawn)
        unconditionally."""
        c = self.num_classes
        return self.teacher.condition(balanced_labels(n, c, rng)) if c else None

    def _normal(self, n: int, rng: torch.Generator) -> Tensor:
        return torch.randn(n, *self.teacher.shape, generator=rng, device=self.device)

    def _sigmas(self, n: int, rng: torch.Generator) -> Tensor:
        t = self.cfg.train
        return sample_sigmas(n, self.sigma_grid, t.sigma_quantile_low, t.sigma_quantile_high, rng)

    def _shard(self, draws: list[dict[str, Tensor | None]]) -> dict[str, Tensor | None]:
        """The members' draws ``K x {name: (n, ...)}`` as this rank's member-major rows."""
        return {name: None if draws[0][name] is None
                else distributed.shard(torch.cat([d[name] for d in draws]))
                for name in draws[0]}

    def critic_batch(self) -> CriticBatch:
        """Each member draws, in this order: labels, latents, teacher-side samples, noise
        levels, the student side's noise and the teacher side's."""
        n = self.cfg.train.batch_size
        side = (self.teacher.sample if self.cfg.ratio.teacher_side == "teacher"
                else self.teacher.sample_data)
        draws = []
        for rng in self.rngs:
            labels = self._labels(n, rng)
            draws.append({"labels": labels, "latents": self._normal(n, rng),
                          "teacher_side": side(n, rng, labels), "sigma": self._sigmas(n, rng),
                          "noise": self._normal(n, rng), "teacher_noise": self._normal(n, rng)})
        return CriticBatch(**self._shard(draws))

    def student_batch(self) -> StudentBatch:
        """Each member draws, in this order: labels, latents, noise levels, noise, the
        oracle's student latents (all ``N`` on every rank) and the regression pairs' rows."""
        n, oracle = self.cfg.train.batch_size, self.oracle_samples
        pairs = 0 if self.pairs is None else len(self.pairs[0]) // self.members  # per member
        draws, oracle_latents = [], []
        for k, rng in enumerate(self.rngs):
            draws.append({"labels": self._labels(n, rng), "latents": self._normal(n, rng),
                          "sigma": self._sigmas(n, rng), "noise": self._normal(n, rng)})
            if oracle:
                oracle_latents.append(self._normal(oracle, rng))
            draws[-1]["pair_index"] = None if not pairs else (
                torch.randint(pairs, (n,), generator=rng, device=self.device) + k * pairs)
        return StudentBatch(**self._shard(draws),
                            oracle_latents=torch.cat(oracle_latents) if oracle else None)

    def _frozen(self) -> Tensor:
        return torch.tensor([s is Status.DIVERGED for s in self.status])

    def sample_labels(self, n: int) -> Tensor | None:
        """``(n,)`` int64: the class of each of :meth:`sample`'s ``n`` samples (``i mod C``);
        None for an unconditional teacher."""
        return evaluation_labels(n, self.num_classes) if self.num_classes else None

    @torch.no_grad()
    def sample(self, n: int, seed: int, member: int = 0, batch_size: int = 1024,
               ema: bool = True) -> Tensor:
        """``n`` samples of member ``member``'s EMA student (the live student with
        ``ema=False``) from latents fixed by ``seed``, ``(n, *shape)``; of the classes
        :meth:`sample_labels` gives for a class-conditional teacher.

        All ``n`` latents are drawn first (on the CPU), so sample ``i`` is the same at any
        batch size and on any device.
        """
        latents = torch.randn(n, *self.teacher.shape, generator=torch.Generator().manual_seed(seed))
        labels = self.sample_labels(n)
        y = None if labels is None else self.teacher.condition(labels.to(self.device))
        student = member_module(self.student_ema if ema else self.student, member)
        with self.autocast:
            return torch.cat([
                student(latents[i:i + batch_size].to(self.device),
                        None if y is None else y[i:i + batch_size]).float().cpu()
                for i in range(0, n, batch_size)])

    def critic_step(self) -> list[dict[str, float]]:
        """One update of the fake score and the ratio network (the method's critic losses);
        diagnostics per member."""
        losses = self.method.critic_losses(self.critic_batch())
        fake_loss = member_means(losses.fake, self.members)
        frozen = self._frozen()
        stepped = apply_update(fake_loss, self.opt_fake, self.fake, math.inf, frozen)
        values = {"loss_fake_dsm": fake_loss.detach()}
        if losses.ratio is not None:
            stepped &= apply_update(losses.ratio, self.opt_ratio, self.ratio, math.inf, frozen)
            values.update(loss_ratio=losses.ratio.detach(), ratio_accuracy=losses.accuracy)
        self._count_nonfinite(stepped)
        columns = distributed.all_reduce_mean(torch.stack(list(values.values()))).T.tolist()
        return [dict(zip(values, row, strict=True)) for row in columns]

    def member_log_ratio(self, member: int, seed: int) -> LogRatioFn:
        """Member ``member``'s ratio estimate as a function of ``(x: (M, *shape), sigma:
        (M,))`` (unconditional), for the live ratio check: its network's clamped ``log r``, or
        the oracle's with a KDE sample drawn from ``torch.Generator(seed)``, so that checking
        never moves the training's random streams."""
        if self.ratio.fitted:
            network = member_module(self.ratio.network, member)
            clamp = self.cfg.ratio.log_ratio_clamp

            @torch.no_grad()
            def estimate(x: Tensor, sigma: Tensor) -> Tensor:
                log_r = network(x.to(self.device), sigma.to(self.device)).float()
                return log_r.clamp(-clamp, clamp).cpu()

            return estimate
        rng = torch.Generator(device=self.device).manual_seed(seed)
        student = member_module(self.student, member)
        with torch.no_grad(), self.autocast:
            samples = student(self._normal(self.oracle_samples, rng)).float()
        return lambda x, sigma: oracle_log_ratio(x.to(self.device), sigma.to(self.device),
                                                 samples, self.teacher.log_prob).cpu()

    def student_step(self) -> list[dict[str, float]]:
        """One update of the student by the method's losses (docs/method.md §3); diagnostics
        per member."""
        k = self.members
        losses = self.method.student_losses(self.student_batch())
        means = {name: member_means(values, k) for name, (values, _) in losses.terms.items()}
        loss = means["loss_dm"]
        for name, (_, weight) in list(losses.terms.items())[1:]:
            loss = loss + weight * means[name]
        stepped = apply_update(loss, self.opt_student, self.student, self.cfg.train.grad_clip,
                               self._frozen())
        self._count_nonfinite(stepped)
        self._update_ema(stepped)
        names = [*means, "grad_norm"]
        columns = distributed.all_reduce_mean(torch.stack([
            *(v.detach() for v in means.values()),
            member_means(losses.step_norm, k)])).T.tolist()
        return [{**diag, **dict(zip(names, row, strict=True))}
                for diag, row in zip(losses.diagnostics, columns, strict=True)]

    def _update_ema(self, stepped: Tensor) -> None:
        """EMA of the members that stepped.

        Decay ``min(ema_decay, t / (t + 1))`` at update ``t = 0, 1, ...``: until the cap the
        EMA is the plain mean of the iterates, so it never carries the initial weights.
        """
        t = self.generator_step
        decay = min(self.cfg.train.ema_decay, t / (t + 1))
        flags = stepped.tolist()
        if all(flags):
            ema_update(self.student_ema, self.student, decay)
        elif any(flags):
            weight = (1 - decay) * stepped.float().to(self.device)
            with torch.no_grad():
                for average, live in zip(self.student_ema.parameters(),
                                         self.student.parameters(), strict=True):
                    average.lerp_(live, per_member(weight, self.members, average))

    def step(self) -> list[dict[str, float]]:
        """``critic_steps_per_generator_step`` critic updates, then one student update.

        Returns:
            Per member: diagnostics of the last critic step and of the student step, plus its
            non-finite count. A member whose updates stay non-finite for
            ``train.max_nonfinite_steps`` consecutive steps is ``diverged`` and frozen from then.
        """
        running = self.running()
        critic: list[dict[str, float]] = [{} for _ in range(self.members)]
        for _ in range(self.cfg.train.critic_steps_per_generator_step):
            critic = self.critic_step()
        student = self.student_step()
        self.generator_step += 1
        for k in running:  # a member that diverged in this step counts it, as a run alone does
            self.member_steps[k] = self.generator_step
        return [{**c, **s, STEP_RECORD_KEY: float(total)}
                for c, s, total in zip(critic, student, self.nonfinite_total, strict=True)]

    def evaluation_counts(self, generator_step: int) -> dict[str, float]:
        """Network evaluations (one per sample) a run has spent by ``generator_step``, counted
        from the schedule (each member of a seed batch spends its own):

        * ``teacher_evaluations``: the regression pairs' ODE (``regression_pairs`` x the Heun
          sampler's evaluations, once), the teacher's score at every student sample, and the
          teacher-side draws of the critic steps when they run the teacher's sampler;
        * ``critic_evaluations``: the fake score and the ratio network, in the critic steps
          (fake on ``B`` student samples, ratio on ``B`` of each side) and the student steps
          (both at the ``B`` noised student samples; the ratio again for the GAN term).

        The warm-up's ``fake_warmup_steps`` critic steps count from step 0.
        """
        train, batch, teacher = self.cfg.train, self.cfg.train.batch_size, self.teacher
        fitted = 1 if self.ratio.fitted else 0
        critic_steps = (train.fake_warmup_steps
                        + generator_step * train.critic_steps_per_generator_step)
        side = (0 if self.cfg.ratio.teacher_side == "data" or teacher.exact_sampler
                else teacher.sampler_evaluations)
        pairs = (train.regression_pairs * teacher.sampler_evaluations if self.pairs is not None
                 else 0)
        gan = 1 if train.gan_weight > 0 else 0
        return {
            "teacher_evaluations": float(pairs + batch * (generator_step + side * critic_steps)),
            "critic_evaluations": float(batch * (critic_steps * (1 + 2 * fitted)
                                                 + generator_step * (1 + fitted + gan))),
        }

    def warmup(self) -> list[dict[str, float]]:
        """``train.fake_warmup_steps`` critic steps before the first student update."""
        records: list[dict[str, float]] = [{} for _ in range(self.members)]
        for _ in range(self.cfg.train.fake_warmup_steps):
            records = self.critic_step()
        return records

    def running(self) -> list[int]:
        """The members still training."""
        return [k for k, s in enumerate(self.status) if s is Status.RUNNING]

    def _count_nonfinite(self, stepped: Tensor) -> None:
        for k, ok in enumerate(stepped.tolist()):
            if self.status[k] is not Status.RUNNING:
                continue
            self.nonfinite_streak[k] = 0 if ok else self.nonfinite_streak[k] + 1
            self.nonfinite_total[k] += not ok
            if self.nonfinite_streak[k] >= self.cfg.train.max_nonfinite_steps:
                self.status[k] = Status.DIVERGED

    # -- checkpoints: one plain-run state per member -----------------------------------------------

    def state_dict(self, member: int = 0) -> dict[str, Any]:
        """Member ``member``'s state as a plain run holds it (so a member's checkpoint resumes
        alone or in any batch); tensors and plain data only (``weights_only`` safe)."""
        state = {name: member_state_dict(getattr(self, name), member) for name in _NETWORKS}
        network = member_state_dict(self.ratio.network, member)
        state["ratio"] = {**{f"network.{key}": v for key, v in network.items()},
                          **self.ratio.member_bins(member)}
        for name in _OPTIMIZERS:
            state[name] = member_optimizer_state(getattr(self, name).state_dict(), member,
                                                 self.members)
        return {**state, "rng": self.rngs[member].get_state(),
                "generator_step": self.member_steps[member],
                "nonfinite_streak": self.nonfinite_streak[member],
                "nonfinite_total": self.nonfinite_total[member],
                "status": str(self.status[member])}

    def load_state_dicts(self, states: list[dict[str, Any]]) -> None:
        """Load one :meth:`state_dict` per member; all at the same generator step."""
        if len(states) != self.members:
            raise ValueError(f"{len(states)} member states for {self.members} members")
        steps = {s["generator_step"] for s in states}
        if len(steps) != 1:
            raise ValueError(f"a seed batch resumes from one generator step, got {sorted(steps)}")
        for name in _NETWORKS:
            load_member_state_dicts(getattr(self, name), [s[name] for s in states])
        prefix = "network."
        load_member_state_dicts(self.ratio.network, [
            {key[len(prefix):]: v for key, v in s["ratio"].items() if key.startswith(prefix)}
            for s in states])
        self.ratio.load_member_bins([s["ratio"] for s in states])
        for name in _OPTIMIZERS:
            getattr(self, name).load_state_dict(stack_optimizer_states([s[name] for s in states]))
        for rng, state in zip(self.rngs, states, strict=True):
            rng.set_state(state["rng"].cpu())
        self.generator_step = steps.pop()
        self.member_steps = [s["generator_step"] for s in states]
        self.nonfinite_streak = [s["nonfinite_streak"] for s in states]
        self.nonfinite_total = [s["nonfinite_total"] for s in states]
        self.status = [Status(s["status"]) for s in states]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a plain run's state (one member)."""
        self.load_state_dicts([state])
