"""`python -m kit <stage> ...`: the same as the `kit` command (see kit/cli.py)."""

from kit.cli import main

main()
