"""The engine stays a pure-torch library: importing it loads no harness library."""

import subprocess
import sys


def test_engine_imports_no_ray_mlflow_typer():
    code = (
        "import sys, dibregman, dibregman.run, dibregman.distill, dibregman.metrics, "
        "dibregman.evaluate\n"
        "leaked = sorted(m for m in ('ray', 'mlflow', 'typer') if m in sys.modules)\n"
        "print(','.join(leaked))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "", f"engine imported {done.stdout.strip()}"
