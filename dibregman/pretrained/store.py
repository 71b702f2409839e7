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
import math
import os
import re
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
    tmp_record.write_text(json.dumps(strict_json(record), indent=2, sort_keys=True,
                                     allow_nan=False) + "\n")
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


def refusal_reason(err: Exception) -> str:
    """Why torch's weights-only loader refused a pickle, in one line and without its advice to
    load with ``weights_only=False`` (which would run whatever the pickle names: this suite
    never does): the unpickler's own reason when it gives one, else the error's first line."""
    text = str(err)
    found = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    reason = found.group(1) if found else (text.strip().splitlines() or [""])[0]
    if "weights_only" in reason:
        reason = "it holds more than tensors and plain containers"
    return f"{type(err).__name__}: {reason.strip()}"


# A float JSON cannot hold (EDMPrecond's sigma_max = inf) is written as {"$float": "inf"}.
NONFINITE_KEY = "$float"


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float as ``{"$float": "inf" | "-inf" | "nan"}``, so that
    the file is strict JSON (bare ``Infinity`` is not, and strict parsers refuse it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return {NONFINITE_KEY: str(value)}
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def _decode_float(obj: dict[str, Any]) -> Any:
    return float(obj[NONFINITE_KEY]) if set(obj) == {NONFINITE_KEY} else obj


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in the file ``path`` (``{"$float": ...}`` back to floats; a file
    written before them, with bare ``Infinity``, reads too); CheckpointError if it is not
    one."""
    try:
        data = json.loads(path.read_text(), object_hook=_decode_float)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from None
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path}: not JSON (not UTF-8 text: byte {err.start})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def load_weights(directory: str | Path) -> dict[str, Tensor]:
    """The ``state_dict`` stored in ``directory``'s ``model.safetensors`` (on the CPU)."""
    return load_file(str(Path(directory) / WEIGHTS_FILE))


def noise_range(sigma_min: float, sigma_max: float, record: dict[str, Any]) -> tuple[float, float]:
    """A config's ``[sigma_min, sigma_max]`` clipped to the imported network's range where its
    record states one (as EDM's sampler clips its 0.002 ... 80 to a VP network's range).

    Raises:
        ValueError: the two ranges do not overlap.
    """
    low = max(sigma_min, record.get("sigma_min") or 0.0)
    high = min(sigma_max, record.get("sigma_max") or float("inf"))
    if not low < high:
        raise ValueError(f"the noise range [{sigma_min}, {sigma_max}] does not overlap the "
                         f"network's [{record.get('sigma_min')}, {record.get('sigma_max')}]")
    return low, high
