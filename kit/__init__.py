"""kit: turn customer-support logs into your own chat assistant.

Stages, each a module with a `run(recipe)` function and a `python -m` command:
`kit.data` (logs -> conversations), `kit.sft` (fine-tune), `kit.eval` (base vs tuned),
`kit.chat` (Gradio side-by-side), `kit.export` (merged model).
"""

__version__ = "0.1.0"
