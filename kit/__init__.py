"""kit: turn customer-support logs into your own chat assistant.

Stages, each a module with a `run(recipe)` function and a `python -m` command:
`kit.data` (logs -> conversations), `kit.sft` (fine-tune), `kit.eval` (base vs tuned),
`kit.chat` (Gradio side-by-side), `kit.export` (merged model).
"""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes warns on every CPU import that it cannot fetch an optional kernel from the hub; kit never
# uses 4-bit on CPU, and the line would bury kit's own one-line error messages.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
