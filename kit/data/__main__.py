"""`python -m kit.data templates|preview|build` (see kit/data/__init__.py)."""

from kit.data import main

main()
