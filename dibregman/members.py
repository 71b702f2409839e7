"""Seed batches: ``K`` independent copies of a network trained in one process.

A sweep repeats every arm over seeds; on a CPU the toy networks are so small that a run's time
goes to per-operation overhead, not arithmetic. :class:`Members` holds the parameters of ``K``
copies of one architecture stacked along a new leading dimension, ``(K, *shape)``, and runs
them with ``torch.func.vmap`` over ``functional_call``: one batched matrix product per layer
instead of ``K``. The copies never mix:

* every loss is a sum over members of each member's own mean, so member ``k``'s gradient is
  exactly its gradient alone;
* AdamW and the EMA act elementwise, so one optimiser over stacked tensors is ``K`` optimisers;
* gradient clipping and the non-finite guard act per member (:func:`member_grad_norms`).

Batches are *member-major*: an input of ``K * B`` rows holds member ``k``'s batch in rows
``[k B, (k + 1) B)``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap


def _key(name: str) -> str:
    """A dotted state name as an attribute name (``net.0.weight`` -> ``net-0-weight``)."""
    return name.replace(".", "-")


class Members(nn.Module):
    """``K`` copies of one architecture with stacked parameters and buffers.

    Args:
        modules: ``K >= 2`` modules of one architecture, each already initialised (its own
            seed); their parameters and buffers are copied, stacked along dimension 0.

    ``forward(*inputs)``: every input is ``(K * B, ...)`` member-major, or None (an absent
    optional argument, such as the labels of an unconditional network); returns the stacked
    outputs ``(K * B, ...)``, member ``k``'s rows computed by member ``k`` alone.
    """

    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        if len(modules) < 2:
            raise ValueError(f"Members needs at least 2 modules, got {len(modules)}")
        self.count = len(modules)
        params, buffers = stack_module_state(modules)
        self._param_names = list(params)
        self._buffer_names = list(buffers)
        for name, value in params.items():
            self.register_parameter(_key(name), nn.Parameter(value.detach().clone()))
        for name, value in buffers.items():
            self.register_buffer(_key(name), value.clone())
        # A plain copy of the architecture (hidden from parameters() and state_dict()): the
        # function vmap maps, and the template of member(k).
        self._template = [copy.deepcopy(modules[0])]
        self._state_names = list(modules[0].state_dict())

    def _stacked(self) -> dict[str, Tensor]:
        return {name: getattr(self, _key(name))
                for name in (*self._param_names, *self._buffer_names)}

    def forward(self, *inputs: Tensor | None) -> Tensor:
        k = self.count
        template = self._template[0]

        def one(state: dict[str, Tensor], *args: Tensor | None) -> Tensor:
            return functional_call(template, state, args)

        split = [None if x is None else x.reshape(k, x.shape[0] // k, *x.shape[1:])
                 for x in inputs]
        in_dims = (0, *(None if x is None else 0 for x in inputs))
        out = vmap(one, in_dims=in_dims)(self._stacked(), *split)
        return out.reshape(-1, *out.shape[2:])

    def member_state_dict(self, k: int) -> dict[str, Tensor]:
        """Member ``k``'s state in the form one plain module of the architecture holds."""
        stacked = self._stacked()
        return {name: stacked[name][k].detach().clone() for name in self._state_names}

    def load_member_state_dicts(self, states: list[dict[str, Tensor]]) -> None:
        """Load ``K`` plain-module states (as :meth:`member_state_dict` gives), one per member."""
        if len(states) != self.count:
            raise ValueError(f"{len(states)} member states for {self.count} members")
        stacked = self._stacked()
        with torch.no_grad():
            for name in self._state_names:
                stacked[name].copy_(torch.stack([s[name] for s in states]))

    def member(self, k: int) -> nn.Module:
        """A plain module holding a copy of member ``k`` (for sampling and evaluation)."""
        module = copy.deepcopy(self._template[0])
        module.load_state_dict(self.member_state_dict(k))
        return module.to(next(self.parameters()).device)

    def _apply(self, fn, recurse: bool = True):
        # .to(device) and friends move the hidden template along with the stacked tensors.
        self._template[0]._apply(fn, recurse)
        return super()._apply(fn, recurse)


def stack_members(modules: list[nn.Module]) -> nn.Module:
    """One module for one member, :class:`Members` for several."""
    return modules[0] if len(modules) == 1 else Members(modules)


def member_state_dict(module: nn.Module, k: int) -> dict[str, Tensor]:
    """Member ``k``'s state of ``module`` as one plain module holds it."""
    return module.member_state_dict(k) if isinstance(module, Members) else module.state_dict()


def load_member_state_dicts(module: nn.Module, states: list[dict[str, Tensor]]) -> None:
    """Load one plain-module state per member into ``module``."""
    if isinstance(module, Members):
        module.load_member_state_dicts(states)
    else:
        (state,) = states
        module.load_state_dict(state)


def member_module(module: nn.Module, k: int) -> nn.Module:
    """Member ``k`` of ``module`` as a plain module (``module`` itself when it is one)."""
    return module.member(k) if isinstance(module, Members) else module


def member_means(values: Tensor, members: int) -> Tensor:
    """Per-member means of per-sample values: ``(K * B,) -> (K,)`` (member-major rows)."""
    return values.reshape(members, -1).mean(dim=1)


def member_grad_norms(parameters: list[nn.Parameter], members: int) -> Tensor:
    """``(K,)`` L2 norms of each member's whole gradient.

    With stacked parameters ``(K, *shape)`` member ``k``'s gradient is the slice ``[k]`` of
    every tensor; a plain module (``K = 1``) has one. Same total as
    ``torch.nn.utils.clip_grad_norm_``: the norm of the per-tensor norms.
    """
    norms = [p.grad.reshape(members, -1).norm(dim=1) for p in parameters if p.grad is not None]
    return torch.stack(norms).norm(dim=0)


def per_member(values: Tensor, members: int, like: Tensor) -> Tensor:
    """``(K,)`` values shaped to broadcast over stacked tensors like ``like`` (``(K, *shape)``);
    a scalar tensor for a plain module (``K = 1``)."""
    if members == 1:
        return values.reshape(())
    return values.reshape(members, *([1] * (like.ndim - 1)))


def member_optimizer_state(state: dict[str, Any], k: int, members: int) -> dict[str, Any]:
    """Member ``k``'s share of an optimiser ``state_dict`` over stacked parameters: every
    per-parameter tensor sliced at ``[k]``, scalars (Adam's step count) as they are; copies,
    never views of the live optimiser's tensors."""
    return {"param_groups": copy.deepcopy(state["param_groups"]),
            "state": {index: {name: (value[k] if members > 1 and value.ndim > 0
                                     else value).clone()
                              for name, value in entry.items()}
                      for index, entry in state["state"].items()}}


def stack_optimizer_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """Inverse of :func:`member_optimizer_state`: one optimiser state over stacked parameters.

    Scalars (step counts) are equal in a batch that trained together; the first is kept.
    """
    if len(states) == 1:
        return states[0]
    first = states[0]
    return {"param_groups": first["param_groups"],
            "state": {index: {name: torch.stack([s["state"][index][name] for s in states])
                              if value.ndim > 0 else value
                              for name, value in entry.items()}
                      for index, entry in first["state"].items()}}
