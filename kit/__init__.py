"""kit: turn customer-support logs into your own chat assistant.

Stages, each a module with a `run(recipe)` function and a `python -m` command (or `kit <stage>`):
`kit.data` (logs -> conversations), `kit.sft` (fine-tune), `kit.eval` (base vs tuned),
`kit.distill` (a smaller student), `kit.chat` (Gradio side-by-side), `kit.export` (deployment files).
"""

__version__ = "0.1.0"

from kit import console as _console

# Before any library is imported: some print their notices at import time (kit.console says which).
_console.setup()
