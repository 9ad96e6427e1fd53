"""`python -m harness ...`: the same commands as the `harness` script (what `torchrun -m harness` runs)."""

from harness.cli import console_main

console_main()
