"""Import NVlabs EDM network pickles (e.g. ``edm-cifar10-32x32-cond-vp.pkl``) as teachers.

:func:`import_edm` reads the pickle with :mod:`dibregman.pretrained.edm_pickle` (nothing from it
executes), builds this project's implementation of the recorded network
(:mod:`dibregman.pretrained.edm_networks`) from the constructor arguments EDM recorded, copies
every tensor into it and writes it with :func:`~dibregman.pretrained.store.save_imported`. The
architecture record it writes::

    {"format": "edm", "class_name": "VPPrecond", "init_kwargs": {...},
     "source": {"path": ..., "sha256": ..., "key": "ema", "module_src_sha256": ...},
     "img_resolution": 32, "img_channels": 3, "label_dim": 10,
     "sigma_min": ..., "sigma_max": ...,          # and "sigma_data" for EDMPrecond
    }

:func:`build` rebuilds the (untrained) network of such a record;
:func:`dibregman.pretrained.load_imported` loads the weights into it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dibregman.pretrained.edm_networks import (
    MODEL_TYPES,
    PRECONDITIONINGS,
    Preconditioned,
    default_model_type,
)
from dibregman.pretrained.edm_pickle import InertModule, load_edm_pickle
from dibregman.pretrained.store import CheckpointError, file_sha256, save_imported

FORMAT = "edm"
# Attributes of a preconditioning copied into the record where it has them.
_RECORDED_ATTRIBUTES = ("img_resolution", "img_channels", "label_dim", "sigma_min", "sigma_max",
                        "sigma_data")
_MAX_LISTED = 5  # names listed in an error about missing or unexpected tensors


def build(record: dict[str, Any]) -> Preconditioned:
    """The network an ``'edm'`` record describes, freshly initialised (weights not loaded).

    Raises:
        CheckpointError: unknown ``class_name`` or ``model_type`` (the message lists the valid
            ones), or constructor arguments the class does not take.
    """
    class_name = record.get("class_name")
    if class_name not in PRECONDITIONINGS:
        raise CheckpointError(f"unknown EDM network class {class_name!r}; supported: "
                              f"{', '.join(PRECONDITIONINGS)}")
    kwargs = record.get("init_kwargs")
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{class_name}: the record's init_kwargs is not an object")
    precond = PRECONDITIONINGS[class_name]
    model_type = kwargs.get("model_type", default_model_type(precond))
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"{class_name}: unknown model_type {model_type!r}; supported: "
                              f"{', '.join(MODEL_TYPES)}")
    try:
        return precond(**kwargs)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{class_name}: cannot build it from its recorded constructor "
                              f"arguments ({err})") from None


# SHA-256 of the source of EDM's training/networks.py, the module its persistent networks embed
# (torch_utils.persistence stores inspect.getsource of it), at each commit of NVlabs/edm that
# changed the file. A pickle whose source is another is imported all the same (its source is
# never run), with a note saying so.
KNOWN_EDM_SOURCES = {
    "2294828d5f59f5fd008f7141e6b8af2095918f2ce019f280a933e4779b5c3cef":
        "NVlabs/edm training/networks.py at 0a2ff34 (2022-10-31)",
    "5db27dcd96674b95c72d5e6491b879cdc35e24039ada3411b4b46a28ed1fe284":
        "NVlabs/edm training/networks.py at b2a26c9 (2022-11-21)",
}


def source_note(record: dict[str, Any]) -> str | None:
    """A one-line note for an imported record whose embedded network source is not a known
    EDM release's (None when it is one)."""
    digest = (record.get("source") or {}).get("module_src_sha256")
    if digest in KNOWN_EDM_SOURCES:
        return None
    return (f"note: the network's embedded source (SHA-256 {str(digest)[:16]}...) is not one "
            f"of the EDM releases' this importer knows; it was not run: only the weights and "
            f"the architecture record were used")


def import_edm(pkl_path: str | Path, out_dir: str | Path, key: str = "ema") -> Path:
    """Import the network ``data[key]`` of the EDM pickle at ``pkl_path`` into ``out_dir``;
    returns ``out_dir``.

    Nothing is written unless the import succeeds (and then atomically, file by file).

    Raises:
        CheckpointError: the pickle refers to anything but tensors and plain data, has no
            ``key`` (the message lists its keys), holds an unsupported network, or tensors that
            do not match the network its arguments build.
        OSError: ``pkl_path`` cannot be read.
    """
    pkl_path = Path(pkl_path)
    sha256 = file_sha256(pkl_path)
    with open(pkl_path, "rb") as handle:
        try:
            data = load_edm_pickle(handle)
        except CheckpointError as err:
            raise CheckpointError(f"{pkl_path}: {err}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{pkl_path}: holds a {type(data).__name__}, not EDM's dict of "
                              "networks")
    if key not in data:
        raise CheckpointError(f"{pkl_path}: no entry {key!r}; it holds "
                              f"{', '.join(map(repr, data)) or 'nothing'}")
    stored = data[key]
    if not isinstance(stored, InertModule) or stored.init_kwargs is None:
        raise CheckpointError(f"{pkl_path}: {key!r} is not an EDM network with recorded "
                              "constructor arguments")
    if stored.init_args:
        raise CheckpointError(f"{pkl_path}: {stored.class_name} was built with positional "
                              "arguments; EDM's networks are built from keyword arguments")
    try:
        init_kwargs = _json_safe(stored.init_kwargs, "init_kwargs")
        network = build({"class_name": stored.class_name, "init_kwargs": init_kwargs})
        _copy_tensors(stored.tensors(), network)
    except CheckpointError as err:
        raise CheckpointError(f"{pkl_path} [{key}]: {err}") from None
    record = {
        "format": FORMAT,
        "class_name": stored.class_name,
        "init_kwargs": init_kwargs,
        "source": {"path": str(pkl_path.resolve()), "sha256": sha256, "key": key,
                   "module_src_sha256": stored.source_sha256},
        **{name: getattr(network, name) for name in _RECORDED_ATTRIBUTES
           if hasattr(network, name)},
    }
    return save_imported(out_dir, network.eval(), record)


def _copy_tensors(tensors: dict[str, torch.Tensor], network: nn.Module) -> None:
    """Load the pickle's ``tensors`` into ``network``, requiring the same names and shapes."""
    expected = network.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"the pickle's tensors do not match {type(network).__name__} built from its "
            f"recorded arguments: {len(missing)} missing ({_some(missing)}), "
            f"{len(unexpected)} unexpected ({_some(unexpected)})")
    mismatched = sorted(name for name in expected if tensors[name].shape != expected[name].shape)
    if mismatched:
        raise CheckpointError(
            "the pickle's tensors do not match the network built from its recorded arguments: "
            + ", ".join(f"{name} {tuple(tensors[name].shape)} vs {tuple(expected[name].shape)}"
                        for name in mismatched[:_MAX_LISTED]))
    network.load_state_dict(tensors, strict=True)


def _some(names: list[str]) -> str:
    listed = ", ".join(names[:_MAX_LISTED])
    return listed + (", ..." if len(names) > _MAX_LISTED else "") if names else "none"


def _json_safe(value: Any, where: str) -> Any:
    """``value`` as JSON data: NumPy scalars become Python ones, tuples lists; anything but
    None, bool, int, float, str, lists and string-keyed dicts is refused."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(name, str) for name in value):
        return {name: _json_safe(item, f"{where}.{name}") for name, item in value.items()}
    raise CheckpointError(f"{where}: a {type(value).__name__}, not plain JSON data")
