"""Read an NVlabs EDM network pickle without executing anything from it.

EDM pickles its networks with its ``torch_utils.persistence`` module: each network object is
reduced to ``torch_utils.persistence._reconstruct_persistent_obj(meta)``, where ``meta`` is a
dict with ``type`` (``'class'``), ``version``, ``module_src`` (the Python source of the module
defining the class), ``class_name`` and ``state`` (the object's ``__dict__``: ``_parameters``,
``_buffers``, ``_modules``, other attributes, and the constructor arguments ``_init_args`` and
``_init_kwargs``). An ordinary ``pickle.load`` would ``exec`` that source, and a pickle can name
any other callable too (``os.system``). :class:`EDMUnpickler` resolves only the names below,
which rebuild tensors and plain data, and refuses every other with a
:class:`~dibregman.pretrained.store.CheckpointError`:

* tensors: ``torch._utils._rebuild_tensor[_v2]`` and ``_rebuild_parameter[_with_state]``
  (parameters come back as plain tensors; backward hooks and extra state are refused), and
  ``torch.storage._load_from_bytes``, reimplemented as ``torch.load(..., weights_only=True)``
  (torch's own restricted unpickler) onto the CPU; torch dtypes;
* plain data: ``builtins`` containers and scalars, ``collections.OrderedDict``,
  ``_codecs.encode`` (protocol-2 bytes), NumPy arrays (of any protocol), scalars and dtypes, and
  ``dnnlib.util.EasyDict`` (read as a plain dict);
* modules: ``torch_utils.persistence._reconstruct_persistent_obj`` and torch's ``ModuleList``,
  ``ModuleDict`` and ``Sequential`` become :class:`InertModule` objects, records of a class
  name and state that have no behaviour; the embedded source is only hashed.
"""

from __future__ import annotations

import _codecs
import _compat_pickle
import builtins
import collections
import hashlib
import io
import pickle
import warnings
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor

from dibregman.pretrained.store import CheckpointError, refusal_reason


class InertModule:
    """A module read from a pickle: its class name and ``__dict__`` state, nothing callable.

    Attributes:
        class_name: the class the pickle named (e.g. ``'VPPrecond'``, ``'ModuleDict'``).
        state: its state: ``_parameters``, ``_buffers``, ``_modules`` (name -> InertModule),
            attributes.
        source_sha256: hex SHA-256 of the module source EDM's pickle embeds (persistent objects
            only; the source itself is dropped, never executed).
        init_args, init_kwargs: the constructor arguments EDM recorded (persistent objects
            only; ``init_kwargs`` is None where none were recorded).
    """

    class_name = "?"
    state: dict[str, Any] | None = None
    source_sha256: str | None = None
    init_args: tuple[Any, ...] = ()
    init_kwargs: dict[str, Any] | None = None

    def __init__(self, class_name: str, state: dict[str, Any], source_sha256: str | None = None,
                 init_args: tuple[Any, ...] = (), init_kwargs: dict[str, Any] | None = None
                 ) -> None:
        self.class_name = class_name
        self.state = state
        self.source_sha256 = source_sha256
        self.init_args = init_args
        self.init_kwargs = init_kwargs

    def __setstate__(self, state: Any) -> None:
        """Pickle's BUILD for torch's containers: their ``__dict__``."""
        if not isinstance(state, dict):
            raise CheckpointError(f"the state of a pickled {self.class_name} is not a dict")
        self.state = state

    def __repr__(self) -> str:
        return f"InertModule({self.class_name!r})"

    def tensors(self) -> dict[str, Tensor]:
        """What ``state_dict()`` of the module would hold: every parameter and persistent
        buffer that is not None, by dotted name."""
        found: dict[str, Tensor] = {}
        self._collect("", found, set())
        return found

    def _collect(self, prefix: str, found: dict[str, Tensor], path: set[int]) -> None:
        where = prefix.rstrip(".") or "the network"
        if not isinstance(self.state, dict):
            raise CheckpointError(f"{where}: a pickled {self.class_name} without state")
        if id(self) in path:
            raise CheckpointError(f"{where}: the pickled modules contain themselves")
        skipped = self.state.get("_non_persistent_buffers_set") or set()
        if not isinstance(skipped, (set, frozenset, list, tuple)):
            raise CheckpointError(f"{where}: _non_persistent_buffers_set of the pickled "
                                  f"{self.class_name} is not a set")
        for group in ("_parameters", "_buffers"):
            entries = self.state.get(group) or {}
            if not isinstance(entries, dict):
                raise CheckpointError(f"{where}: {group} of the pickled {self.class_name} is "
                                      "not a dict")
            for name, value in entries.items():
                if value is None or (group == "_buffers" and name in skipped):
                    continue
                if not isinstance(value, Tensor):
                    raise CheckpointError(f"{prefix}{name}: a {type(value).__name__}, not a "
                                          "tensor")
                found[f"{prefix}{name}"] = value
        children = self.state.get("_modules") or {}
        if not isinstance(children, dict):
            raise CheckpointError(f"{where}: _modules of the pickled {self.class_name} is not "
                                  "a dict")
        for name, child in children.items():
            if child is None:
                continue
            if not isinstance(child, InertModule):
                raise CheckpointError(f"{prefix}{name}: a {type(child).__name__}, not a module")
            child._collect(f"{prefix}{name}.", found, path | {id(self)})


def _container(name: str) -> type[InertModule]:
    """The stand-in for ``torch.nn.modules.container.<name>``: pickle creates it empty and
    hands it its state."""
    return type(f"Inert{name}", (InertModule,), {"class_name": name, "__module__": __name__})


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a plain dict (whose pickled attribute state, if
    any, becomes items)."""

    def __setstate__(self, state: Any) -> None:
        if state:
            if not isinstance(state, dict):
                raise CheckpointError("the state of a pickled EasyDict is not a dict")
            self.update(state)


def _persistent_object(meta: Any) -> InertModule:
    """Replaces ``torch_utils.persistence._reconstruct_persistent_obj``: the object ``meta``
    describes, as an :class:`InertModule`; ``meta['module_src']`` is hashed, not executed."""
    if not isinstance(meta, dict):
        raise CheckpointError("a persistent object's metadata is not a dict")
    class_name, source, state = meta.get("class_name"), meta.get("module_src"), meta.get("state")
    if meta.get("type") != "class" or not isinstance(class_name, str) or not isinstance(
            source, str) or not isinstance(state, dict):
        raise CheckpointError("a persistent object's metadata lacks type='class', class_name, "
                              "module_src or state")
    state = dict(state)
    init_args = state.pop("_init_args", None)
    init_kwargs = state.pop("_init_kwargs", None)
    if not isinstance(init_args, (tuple, list, type(None))) or not isinstance(
            init_kwargs, (dict, type(None))):
        raise CheckpointError(f"{class_name}: its recorded constructor arguments are not a "
                              "tuple and a dict")
    return InertModule(class_name, state,
                       source_sha256=hashlib.sha256(source.encode("utf-8")).hexdigest(),
                       init_args=tuple(init_args or ()),
                       init_kwargs=dict(init_kwargs) if init_kwargs is not None else None)


def _load_from_bytes(data: Any) -> Any:
    """Replaces ``torch.storage._load_from_bytes``: the storage ``torch.save`` wrote into
    ``data``, read by torch's own weights-only unpickler onto the CPU."""
    if not isinstance(data, bytes):
        raise CheckpointError("a pickled storage is not bytes")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        try:
            storage = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as err:
            raise CheckpointError(f"a pickled storage was refused (only tensor data is read): "
                                  f"{refusal_reason(err)}") from None
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise CheckpointError(f"a pickled storage holds a {type(storage).__name__}")
    return storage


def _no_hooks(hooks: Any) -> None:
    if hooks:
        raise CheckpointError("a pickled tensor carries backward hooks")


def _rebuild_tensor(storage: Any, offset: int, size: tuple[int, ...],
                    stride: tuple[int, ...]) -> Tensor:
    """Replaces ``torch._utils._rebuild_tensor``: a view of ``storage``."""
    if not isinstance(storage, torch.TypedStorage):
        raise CheckpointError("a pickled tensor's storage is not a storage")
    return torch._utils._rebuild_tensor(storage, offset, size, stride)


def _rebuild_tensor_v2(storage: Any, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                       requires_grad: bool, backward_hooks: Any, metadata: Any = None) -> Tensor:
    """Replaces ``torch._utils._rebuild_tensor_v2``: a view of ``storage`` (without hooks)."""
    _no_hooks(backward_hooks)
    if metadata:
        raise CheckpointError("a pickled tensor carries extra metadata")
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: bool, backward_hooks: Any,
                       state: Any = None) -> Tensor:
    """Replaces ``torch._utils._rebuild_parameter[_with_state]``: the parameter's values."""
    _no_hooks(backward_hooks)
    if state:
        raise CheckpointError("a pickled parameter carries extra state")
    if not isinstance(data, Tensor):
        raise CheckpointError("a pickled parameter does not hold a tensor")
    return data.detach()


def _encode(text: Any, encoding: str = "utf-8") -> bytes:
    """Replaces ``_codecs.encode``, as protocol-2 pickles use it for bytes: latin-1 only."""
    if not isinstance(text, str) or encoding != "latin1":
        raise CheckpointError("a pickled bytes object is not latin1-encoded text")
    return _codecs.encode(text, "latin1")


_NUMPY_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]
_NUMPY_SCALAR = np.float64(0).__reduce__()[0]


def _numpy_array(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """Replaces ``numpy.core.multiarray._reconstruct``: an empty ndarray (never a subclass)
    that pickle then fills."""
    if subtype is not np.ndarray:
        raise CheckpointError("a pickled array is not a numpy.ndarray")
    return _NUMPY_RECONSTRUCT(subtype, shape, dtype)


def _numpy_from_buffer(buffer: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    """Replaces ``numpy.core.numeric._frombuffer`` (arrays in protocol-5 pickles): an array of
    a plain dtype over ``buffer``'s bytes."""
    if not isinstance(buffer, (bytes, bytearray, pickle.PickleBuffer)) or not isinstance(
            dtype, np.dtype) or dtype.hasobject:
        raise CheckpointError("a pickled array is not plain data in a buffer")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


_BUILTINS = ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool",
             "str", "bytes", "bytearray")
_TORCH_DTYPES = tuple(name for name in (
    "float16", "float32", "float64", "bfloat16", "half", "float", "double", "complex64",
    "complex128", "uint8", "int8", "int16", "int32", "int64", "short", "int", "long", "bool")
    if isinstance(getattr(torch, name, None), torch.dtype))

_ALLOWED: dict[tuple[str, str], Any] = {
    **{("builtins", name): getattr(builtins, name) for name in _BUILTINS},
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _encode,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    **{("torch", name): getattr(torch, name) for name in _TORCH_DTYPES},
    **{(module, "_reconstruct"): _numpy_array
       for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "scalar"): _NUMPY_SCALAR
       for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "_frombuffer"): _numpy_from_buffer
       for module in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("dnnlib.util", "EasyDict"): EasyDict,
    **{("torch.nn.modules.container", name): _container(name)
       for name in ("ModuleList", "ModuleDict", "Sequential")},
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_object,
}


class EDMUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the allowlisted names (module docstring); any other
    global, and any persistent id, raises :class:`CheckpointError` before anything runs."""

    def find_class(self, module: str, name: str) -> Any:
        # Protocols 0-2 write Python 2's names (``__builtin__.set``): read them as Python 3's.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"refused {module}.{name}: only tensors and plain containers (and EDM's "
                "network records) are allowed in an imported pickle; nothing from it was "
                "executed") from None

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError("refused a persistent id: an EDM pickle holds none")


def load_edm_pickle(file: IO[bytes]) -> Any:
    """The object pickled in ``file``, EDM's networks in it as :class:`InertModule` objects.

    Raises:
        CheckpointError: the pickle names anything but tensors and plain data, or is not a
            readable pickle.
    """
    try:
        return EDMUnpickler(file).load()
    except CheckpointError:
        raise
    except Exception as err:  # any other failure to read it: a damaged or foreign file
        raise CheckpointError(f"not a readable EDM pickle ({type(err).__name__}: {err})") from None
