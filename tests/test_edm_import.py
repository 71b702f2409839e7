"""Importing NVlabs EDM network pickles: the import reproduces the pickled network, reads it
without executing anything from it, refuses any other callable, and the preconditionings
follow EDM's Table 1.

The pickles are written in EDM's layout by this file's own stand-in for EDM's
``torch_utils.persistence`` (registered in ``sys.modules`` only while pickling): each network
module is reduced to ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta``
as EDM writes it (``type``, ``version``, ``module_src``, ``class_name``, ``state`` holding
``_init_args`` and ``_init_kwargs``), where ``module_src`` would write a marker file and raise
if anything executed it.
"""

from __future__ import annotations

import builtins
import contextlib
import math
import os
import pickle
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from dibregman.pretrained import edm_networks, load_imported
from dibregman.pretrained.edm import build, import_edm
from dibregman.pretrained.edm_networks import DhariwalUNet, EDMPrecond, VEPrecond, VPPrecond
from dibregman.pretrained.store import CheckpointError, file_sha256, read_record


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- EDM's pickle layout, written by a stand-in for torch_utils.persistence ------------------


@contextlib.contextmanager
def fake_persistence() -> Iterator[types.ModuleType]:
    """``torch_utils.persistence`` in ``sys.modules`` for the duration, so that pickle can name
    its functions; none of them may ever run."""
    package = types.ModuleType("torch_utils")
    module = types.ModuleType("torch_utils.persistence")

    def never(*args: Any) -> None:
        raise AssertionError("a function of torch_utils.persistence ran")

    for name in ("_reconstruct_persistent_obj", "_src_to_module"):
        function = types.FunctionType(never.__code__, {}, name)
        function.__module__, function.__qualname__ = module.__name__, name
        setattr(module, name, function)
    package.persistence = module
    saved = {name: sys.modules.get(name) for name in (package.__name__, module.__name__)}
    sys.modules.update({package.__name__: package, module.__name__: module})
    try:
        yield module
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def module_source(marker: Path) -> str:
    """The ``module_src`` the pickles embed: executing it would leave ``marker`` and raise."""
    return (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('executed')\n"
            "print('the pickled module source was executed')\n"
            "raise RuntimeError('the pickled module source was executed')\n")


class EDMLayoutPickler(pickle.Pickler):
    """Pickles our EDM-architecture modules as EDM's persistence does: each reduces to
    ``(torch_utils.persistence._reconstruct_persistent_obj, (meta,))``; torch's containers and
    tensors pickle as usual."""

    def __init__(self, file: Any, persistence: types.ModuleType, module_src: str,
                 init_kwargs: dict[int, dict[str, Any]]) -> None:
        super().__init__(file, protocol=4)
        self.persistence = persistence
        self.module_src = module_src
        self.init_kwargs = init_kwargs  # id(module) -> its recorded constructor kwargs

    def reducer_override(self, obj: Any) -> Any:
        if not (isinstance(obj, nn.Module) and type(obj).__module__ == edm_networks.__name__):
            return NotImplemented
        state = {**obj.__dict__, "_init_args": (),
                 "_init_kwargs": self.init_kwargs.get(id(obj), {})}
        meta = {"type": "class", "version": 6, "module_src": self.module_src,
                "class_name": type(obj).__name__, "state": state}
        return self.persistence._reconstruct_persistent_obj, (meta,)


def write_edm_pickle(path: Path, data: dict[str, Any], init_kwargs: dict[int, dict[str, Any]],
                     marker: Path) -> Path:
    with fake_persistence() as persistence, open(path, "wb") as handle:
        EDMLayoutPickler(handle, persistence, module_source(marker), init_kwargs).dump(data)
    return path


# --- tiny networks of each architecture ------------------------------------------------------

NETWORKS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    # DDPM++ as EDM's train.py configures it (positional embedding, standard encoder/decoder).
    "vp-ddpmpp": (VPPrecond, {
        "img_resolution": 8, "img_channels": 3, "label_dim": 0, "use_fp16": False,
        "model_type": "SongUNet", "embedding_type": "positional", "channel_mult_noise": 1,
        "encoder_type": "standard", "decoder_type": "standard", "resample_filter": [1, 1],
        "model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4],
        "augment_dim": 9, "dropout": 0.13}),
    # NCSN++-style: Fourier embedding, residual encoder, skip decoder, class-conditional.
    "ve-ncsnpp": (VEPrecond, {
        "img_resolution": 8, "img_channels": 3, "label_dim": 4, "use_fp16": False,
        "model_type": "SongUNet", "embedding_type": "fourier", "channel_mult_noise": 2,
        "encoder_type": "residual", "decoder_type": "skip", "resample_filter": [1, 3, 3, 1],
        "model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1,
        "attn_resolutions": [4]}),
    # ADM, class-conditional; 64 channels per head, so attention runs.
    "edm-adm": (EDMPrecond, {
        "img_resolution": 8, "img_channels": 3, "label_dim": 10, "use_fp16": False,
        "model_type": "DhariwalUNet", "model_channels": 64, "channel_mult": [1, 2],
        "num_blocks": 1, "attn_resolutions": [8, 4]}),
}
SIGMAS = {"vp-ddpmpp": [0.002, 0.2, 2.0, 80.0], "ve-ncsnpp": [0.02, 0.5, 5.0, 80.0],
          "edm-adm": [0.002, 0.5, 5.0, 80.0]}


def make_network(name: str, seed: int = 0) -> nn.Module:
    """The network ``name`` with every parameter random (so that no zero-initialised output
    layer hides the rest)."""
    precond, kwargs = NETWORKS[name]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        network = precond(**kwargs)
        with torch.no_grad():
            for parameter in network.parameters():
                parameter.normal_(0, 0.2)
    return network.eval().requires_grad_(False)


def pickle_network(tmp_path: Path, name: str, network: nn.Module,
                   recorded: dict[str, Any] | None = None) -> Path:
    """EDM's training-loop layout: the EMA network among other entries."""
    data = {"ema": network, "loss_fn": None,
            "dataset_kwargs": {"class_name": "training.dataset.ImageFolderDataset"}}
    kwargs = {id(network): recorded if recorded is not None else NETWORKS[name][1]}
    return write_edm_pickle(tmp_path / f"{name}.pkl", data, kwargs, tmp_path / "executed")


@pytest.mark.parametrize("name", list(NETWORKS))
def test_import_reproduces_the_pickled_network(tmp_path: Path, name: str) -> None:
    network = make_network(name)
    path = pickle_network(tmp_path, name, network)

    out = import_edm(path, tmp_path / "teacher")
    imported = load_imported(out)

    assert not (tmp_path / "executed").exists()
    assert type(imported) is type(network)
    record = read_record(out)
    assert record["format"] == "edm" and record["class_name"] == type(network).__name__
    assert record["source"]["sha256"] == file_sha256(path)
    assert record["init_kwargs"] == NETWORKS[name][1]
    assert record["img_resolution"] == 8 and record["img_channels"] == 3
    assert record["sigma_max"] == network.sigma_max
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 8, 8, generator=generator)
    label_dim = network.label_dim
    label_choices = [None]
    if label_dim:
        label_choices.append(torch.eye(label_dim)[torch.arange(4) % label_dim])
    for sigma in SIGMAS[name]:
        sigmas = torch.full((4,), sigma)
        for labels in label_choices:
            torch.testing.assert_close(imported(x, sigmas, labels), network(x, sigmas, labels),
                                       rtol=1e-5, atol=1e-5)


def test_import_copies_every_tensor(tmp_path: Path) -> None:
    network = make_network("edm-adm")
    imported = load_imported(import_edm(pickle_network(tmp_path, "edm-adm", network),
                                        tmp_path / "teacher"))
    assert isinstance(imported.model, DhariwalUNet)
    original = network.state_dict()
    assert imported.state_dict().keys() == original.keys()
    for key, tensor in imported.state_dict().items():
        assert torch.equal(tensor, original[key]), key


# --- refusals ---------------------------------------------------------------------------------


class Call:
    """Pickles as a call of ``function(*args)``, as a malicious pickle would."""

    def __init__(self, function: Callable[..., Any], *args: Any) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.function, self.args


def touching(marker: Path) -> dict[str, Call]:
    """Calls that would create ``marker`` if unpickled."""
    return {
        "os.system": Call(os.system, f"touch {marker}"),
        "builtins.eval": Call(builtins.eval,
                              f"__import__('pathlib').Path({str(marker)!r}).write_text('x')"),
        "subprocess.Popen": Call(subprocess.Popen, ["touch", str(marker)]),
    }


@pytest.mark.parametrize("attack", ["os.system", "builtins.eval", "subprocess.Popen"])
@pytest.mark.parametrize("where", ["top level", "inside a network's recorded arguments"])
def test_refuses_any_other_callable(tmp_path: Path, attack: str, where: str) -> None:
    marker = tmp_path / "attacked"
    call = touching(marker)[attack]
    network = make_network("vp-ddpmpp")
    recorded = dict(NETWORKS["vp-ddpmpp"][1])
    data: dict[str, Any] = {"ema": network}
    if where == "top level":
        data["loss_fn"] = call
    else:
        recorded["dropout"] = call
    path = write_edm_pickle(tmp_path / "evil.pkl", data, {id(network): recorded},
                            tmp_path / "executed")

    with pytest.raises(CheckpointError) as caught:
        import_edm(path, tmp_path / "teacher")

    refused = f"{call.function.__module__}.{call.function.__qualname__}"  # posix.system on Linux
    assert f"refused {refused}" in str(caught.value)
    assert "only tensors and plain containers" in str(caught.value)
    assert not marker.exists() and not (tmp_path / "executed").exists()
    assert not (tmp_path / "teacher").exists()


def test_refuses_the_rest_of_edm_persistence(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    with fake_persistence() as persistence, open(path, "wb") as handle:
        pickle.dump({"ema": Call(persistence._src_to_module, "raise SystemExit")}, handle)
    with pytest.raises(CheckpointError, match="refused torch_utils.persistence._src_to_module"):
        import_edm(path, tmp_path / "teacher")
    assert not (tmp_path / "teacher").exists()


def test_bench_teacher_import_edm(tmp_path: Path) -> None:
    """The command imports a good pickle (exit 0) and refuses a bad one with exit 2, writing
    nothing."""
    from typer.testing import CliRunner

    from bench.cli import app

    network = make_network("vp-ddpmpp")
    path = pickle_network(tmp_path, "vp-ddpmpp", network)
    good = CliRunner().invoke(app, ["teacher", "import", "edm", str(path), "--out",
                                    str(tmp_path / "teacher")])
    assert good.exit_code == 0, good.output
    assert read_record(tmp_path / "teacher")["class_name"] == "VPPrecond"
    # the test pickle's module source is no EDM release's: a note says it was not run
    assert "is not one of the EDM releases' this importer knows; it was not run" in " ".join(
        good.output.split())

    evil = write_edm_pickle(tmp_path / "evil.pkl", {"ema": network, "loss_fn": Call(os.getcwd)},
                            {id(network): NETWORKS["vp-ddpmpp"][1]}, tmp_path / "executed")
    bad = CliRunner().invoke(app, ["teacher", "import", "edm", str(evil), "--out",
                                   str(tmp_path / "refused")])
    assert bad.exit_code == 2 and "only tensors and plain containers" in bad.output
    assert not (tmp_path / "refused").exists()


def test_a_missing_key_lists_the_keys_present(tmp_path: Path) -> None:
    path = pickle_network(tmp_path, "vp-ddpmpp", make_network("vp-ddpmpp"))
    with pytest.raises(CheckpointError, match="no entry 'model'.*'ema', 'loss_fn'"):
        import_edm(path, tmp_path / "teacher", key="model")
    with pytest.raises(CheckpointError, match="'loss_fn' is not an EDM network"):
        import_edm(path, tmp_path / "teacher", key="loss_fn")
    assert not (tmp_path / "teacher").exists()


def test_tensors_that_do_not_fit_the_recorded_arguments_are_refused(tmp_path: Path) -> None:
    recorded = {**NETWORKS["vp-ddpmpp"][1], "num_blocks": 2}
    path = pickle_network(tmp_path, "vp-ddpmpp", make_network("vp-ddpmpp"), recorded)
    with pytest.raises(CheckpointError, match=r"do not match VPPrecond.*missing \(model\.dec"):
        import_edm(path, tmp_path / "teacher")
    assert not (tmp_path / "teacher").exists()


def test_build_names_the_supported_classes() -> None:
    with pytest.raises(CheckpointError, match="VPPrecond, VEPrecond, EDMPrecond"):
        build({"format": "edm", "class_name": "iDDPMPrecond", "init_kwargs": {}})
    with pytest.raises(CheckpointError, match="SongUNet, DhariwalUNet"):
        build({"format": "edm", "class_name": "EDMPrecond",
               "init_kwargs": {"img_resolution": 8, "img_channels": 3, "model_type": "UNet"}})


# --- preconditioning (EDM, Table 1) against hand-computed values -----------------------------


class StubModel(nn.Module):
    """``F`` returning a fixed output and remembering its inputs."""

    def __init__(self, output: Tensor) -> None:
        super().__init__()
        self.output = output
        self.inputs: tuple[Tensor, Tensor, Tensor | None] | None = None

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None,
                augment_labels: Tensor | None = None) -> Tensor:
        self.inputs = (x, noise_labels, class_labels)
        return self.output


TINY_SONG = {"img_resolution": 4, "img_channels": 1, "model_channels": 8, "channel_mult": [1],
             "num_blocks": 1, "attn_resolutions": []}
X = torch.full((2, 1, 4, 4), 3.0)
F_OUT = torch.full((2, 1, 4, 4), 0.5)


def with_stub(network: nn.Module) -> StubModel:
    network.model = StubModel(F_OUT)
    return network.model


def test_vp_preconditioning() -> None:
    network = VPPrecond(**TINY_SONG)
    stub = with_stub(network)
    sigmas = [1.0, 10.0]

    denoised = network(X, torch.tensor(sigmas))

    x_in, c_noise, _ = stub.inputs
    for i, sigma in enumerate(sigmas):
        t = (math.sqrt(0.1**2 + 2 * 19.9 * math.log(1 + sigma**2)) - 0.1) / 19.9
        assert c_noise[i].item() == pytest.approx(999 * t, rel=1e-5)
        assert x_in[i].unique().item() == pytest.approx(3 / math.sqrt(sigma**2 + 1), rel=1e-6)
        assert denoised[i].unique().item() == pytest.approx(3 - sigma * 0.5, rel=1e-6)
    assert network.sigma_max == pytest.approx(math.sqrt(math.exp(0.5 * 19.9 + 0.1) - 1), rel=1e-5)
    # sigma(1e-5) ~ 1e-3, computed in float32 as EDM does (hence the loose tolerance).
    assert network.sigma_min == pytest.approx(1e-3, rel=0.03)


def test_ve_preconditioning() -> None:
    network = VEPrecond(**TINY_SONG)
    stub = with_stub(network)

    denoised = network(X, torch.tensor([0.02, 50.0]))

    x_in, c_noise, _ = stub.inputs
    torch.testing.assert_close(x_in, X)
    torch.testing.assert_close(c_noise, torch.tensor([math.log(0.01), math.log(25.0)]))
    torch.testing.assert_close(denoised[:, 0, 0, 0], torch.tensor([3 + 0.02 * 0.5, 3 + 25.0]))
    assert (network.sigma_min, network.sigma_max) == (0.02, 100)


def test_edm_preconditioning_with_labels() -> None:
    network = EDMPrecond(**TINY_SONG, label_dim=3, model_type="SongUNet", sigma_data=0.5)
    stub = with_stub(network)
    labels = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])

    denoised = network(X, torch.tensor([0.5, 2.0]), labels)

    x_in, c_noise, passed = stub.inputs
    torch.testing.assert_close(passed, labels)
    for i, sigma in enumerate([0.5, 2.0]):
        c_skip = 0.25 / (sigma**2 + 0.25)
        c_out = sigma * 0.5 / math.sqrt(sigma**2 + 0.25)
        c_in = 1 / math.sqrt(sigma**2 + 0.25)
        assert c_noise[i].item() == pytest.approx(math.log(sigma) / 4, rel=1e-6)
        assert x_in[i].unique().item() == pytest.approx(3 * c_in, rel=1e-6)
        assert denoised[i].unique().item() == pytest.approx(c_skip * 3 + c_out * 0.5, rel=1e-6)
    network(X, torch.tensor([0.5, 2.0]))  # unconditional: zero labels
    torch.testing.assert_close(stub.inputs[2], torch.zeros(1, 3))


def test_a_known_release_source_gets_no_note() -> None:
    from dibregman.pretrained.edm import KNOWN_EDM_SOURCES, source_note

    known = next(iter(KNOWN_EDM_SOURCES))
    assert source_note({"source": {"module_src_sha256": known}}) is None
    assert "was not run" in source_note({"source": {"module_src_sha256": "0" * 64}})


def test_an_infinite_noise_bound_is_written_as_strict_json(tmp_path: Path) -> None:
    """EDM's EDMPrecond records sigma_max = inf: architecture.json stays strict JSON (no bare
    Infinity), reads back as inf, and a file written before, with bare Infinity, still reads."""
    import json

    from dibregman.pretrained.store import RECORD_FILE

    network = make_network("edm-adm")
    network.sigma_max = float("inf")
    out = import_edm(pickle_network(tmp_path, "edm-adm", network), tmp_path / "teacher")
    text = (out / RECORD_FILE).read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"non-strict JSON: {name}"))
    assert read_record(out)["sigma_max"] == float("inf")
    (out / RECORD_FILE).write_text(text.replace('{"$float": "inf"}', "Infinity"))
    assert read_record(out)["sigma_max"] == float("inf")


def test_a_refusal_never_advises_turning_the_safety_off(tmp_path: Path) -> None:
    from dibregman.pretrained.store import refusal_reason

    torch.save({"call": Call(os.getcwd)}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError) as caught:
        torch.load(tmp_path / "evil.pt", weights_only=True)
    assert "weights_only" in str(caught.value)  # torch's own message advises it
    reason = refusal_reason(caught.value)
    assert "weights_only" not in reason and "UnpicklingError" in reason
