"""An imported teacher on disk: ``model.safetensors`` + ``architecture.json``.

``architecture.json`` is a JSON object with at least ``format`` (the importer, a key of
:data:`dibregman.pretrained.FORMATS`) and ``source`` (the file or folder it was imported from,
with its SHA-256 for a file); the rest is the format's own (class names, constructor
arguments). ``model.safetensors`` holds the network's ``state_dict`` (safetensors stores plain
tensors only, so loading it executes nothing).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

WEIGHTS_FILE = "model.safetensors"
RECORD_FILE = "architecture.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be imported, or a directory that holds no import; the message
    says what is wrong and what is valid."""


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_imported(directory: str | Path, network: nn.Module, record: dict[str, Any]) -> Path:
    """Write ``network``'s weights and ``record`` into ``directory`` (created); returns it.

    Both files are written to temporary names first and renamed, so an interrupted import
    leaves no half-written teacher. Tensors are made contiguous and stored unshared
    (safetensors refuses aliased storage).
    """
    if "format" not in record:
        raise ValueError("an architecture record needs a 'format'")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.detach().contiguous().clone()
               for name, tensor in network.state_dict().items()}
    tmp_weights = directory / (WEIGHTS_FILE + ".tmp")
    tmp_record = directory / (RECORD_FILE + ".tmp")
    save_file(weights, str(tmp_weights))
    tmp_record.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_weights, directory / WEIGHTS_FILE)
    os.replace(tmp_record, directory / RECORD_FILE)
    return directory


def read_record(directory: str | Path) -> dict[str, Any]:
    """The architecture record of an imported teacher directory."""
    path = Path(directory) / RECORD_FILE
    if not path.is_file() or not (Path(directory) / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{directory} holds no imported teacher (expected {RECORD_FILE} "
                              f"and {WEIGHTS_FILE}; write them with `bench teacher import`)")
    return read_json_object(path)


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in the file ``path``; CheckpointError if it is not one."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def load_weights(directory: str | Path) -> dict[str, Tensor]:
    """The ``state_dict`` stored in ``directory``'s ``model.safetensors`` (on the CPU)."""
    return load_file(str(Path(directory) / WEIGHTS_FILE))
