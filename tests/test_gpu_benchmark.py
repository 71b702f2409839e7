"""benchmarks/gpu.py in its CPU-sized mode (--tiny), as a subprocess: the table's rows are there
with finite numbers; the DDP row (torchrun, 2 gloo processes) matches one process."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_benchmark(*args: str) -> dict[str, list[str]]:
    """Run ``benchmarks/gpu.py --tiny ARGS``; its table's rows by measurement name (cells)."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stdout + done.stderr
    header = "| measurement | setting | s / step |"
    assert header in done.stdout, done.stdout
    lines = done.stdout[done.stdout.index(header):].splitlines()
    rows = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 8, line
        rows[cells[0]] = cells
    return rows


def finite(cell: str) -> float:
    value = float(cell)
    assert math.isfinite(value) and value > 0, cell
    return value


def test_tiny_table_times_a_cifar_iteration_and_a_text_to_image_step():
    rows = run_benchmark("--rows", "cifar10", "text")
    assert set(rows) == {"cifar10 iteration", "text-to-image step"}
    cifar = rows["cifar10 iteration"]
    finite(cifar[2])  # s / iteration
    finite(cifar[3])  # achieved TFLOP/s
    assert "GFLOP/iteration" in cifar[1] and finite(cifar[1].split(", ")[-1].split()[0])
    assert cifar[4] == "unknown (no peak for cpu)"  # no peak FLOP/s table entry for a CPU
    assert cifar[5] == "n/a"  # peak memory is measured on a GPU only
    text = rows["text-to-image step"]
    finite(text[2])
    assert text[5] == "n/a"


@pytest.mark.slow
def test_tiny_ddp_row_matches_one_process():
    rows = run_benchmark("--rows", "ddp")
    ddp = rows["DDP gradients"]
    assert ddp[1].startswith("2 x gloo")
    assert ddp[6].startswith("match: "), ddp[6]
    difference = float(ddp[6].split("= ")[1].split()[0])
    assert math.isfinite(difference) and difference <= 1e-4


def test_peak_flops_picks_the_variant_before_its_family():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # gpu.py imports its sibling perf.py
    try:
        import gpu
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert gpu.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu.peak_flops("NVIDIA H100 NVL") == 835e12
    assert gpu.peak_flops("NVIDIA H200") == 989e12
    assert gpu.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu.peak_flops("Tesla V100-SXM2-16GB") is None
