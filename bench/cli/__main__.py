"""``python -m bench.cli``: the ``bench`` command (torchrun's workers start it this way)."""

from bench.cli import main

main()
