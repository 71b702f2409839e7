"""Pretrained teachers imported from other codebases' checkpoints.

An import turns a foreign checkpoint (an EDM network pickle, a diffusers ``save_pretrained``
folder) into a directory of this project's own format (:mod:`dibregman.pretrained.store`):
``model.safetensors`` holds the weights, ``architecture.json`` the record of what they are
(``format``: which importer wrote them and so which module rebuilds the network). Loading never
unpickles anything and never runs code from the checkpoint.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from torch import nn

from dibregman.pretrained.store import CheckpointError, load_weights, read_record

# format -> module whose ``build(record) -> nn.Module`` rebuilds the network of a record.
FORMATS = {
    "edm": "dibregman.pretrained.edm",
    "diffusers": "dibregman.pretrained.diffusers_unet",
    "diffusers_text": "dibregman.pretrained.diffusers_text",
}


def load_imported(directory: str | Path) -> nn.Module:
    """The denoiser ``D(x, sigma, class_labels=None)`` an import wrote into ``directory``.

    Raises:
        CheckpointError: the directory holds no import, or one of an unknown format.
    """
    record = read_record(directory)
    fmt = record.get("format")
    if fmt not in FORMATS:
        raise CheckpointError(f"{directory}: unknown format {fmt!r} in its architecture record; "
                           f"known: {', '.join(FORMATS)}")
    network = importlib.import_module(FORMATS[fmt]).build(record)
    network.load_state_dict(load_weights(directory), strict=True)
    return network.eval().requires_grad_(False)
