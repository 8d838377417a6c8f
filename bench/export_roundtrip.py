"""Export round trip on a finished run: merged vs base + adapter, GGUF vs the tuned model, Modelfile vs template.

    python bench/export_roundtrip.py recipes/quickstart.yaml [--set output_dir=/tmp/copy] [--prompts 50] [--reuse]

Exports every format (`kit.export.run`, into `<run>/export/`: point `output_dir` at a copy of the run to keep
the original untouched; `--reuse` measures an existing export), then prints:
- merged: max |logit difference| in float32 against base + adapter (PEFT, unmerged) on 20 held-out prompts;
- gguf f16 and q8_0, reloaded with transformers' GGUF loader: greedy next-token agreement with the tuned model
  on N held-out prompts (test split, then validation) and at every prompt position, max |logit difference|,
  the tuned model's top-2 margin where they disagree (near ties flip first), and whether the GGUF's own
  tokenizer gives the same ids as the training tokenizer;
- llama-cpp-python (when installed): greedy next-token agreement of each GGUF;
- Modelfile: the TEMPLATE rendered for a 3-turn conversation vs the tokenizer's chat template.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def prompts(recipe, count: int) -> list[list[dict]]:
    """Held-out conversations cut before their last assistant answer."""
    from kit import data

    conversations = data.load_split(recipe, "test") + data.load_split(recipe, "validation")
    chosen = []
    for conversation in conversations:
        messages = conversation["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        chosen.append(messages[:last])
        if len(chosen) == count:
            break
    return chosen


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kit import export, models
    from kit.recipe import load_recipe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--reuse", action="store_true", help="measure the run's existing export/ instead of exporting")
    parser.add_argument("--skip-transformers-gguf", action="store_true", help="skip reloading the GGUFs with transformers")
    args = parser.parse_args()
    torch.manual_seed(0)
    recipe = load_recipe(args.recipe, args.overrides)
    recipe.export.formats = list(export.FORMATS)

    started = time.time()
    root = recipe.run_dir / "export" if args.reuse else export.run(recipe)
    print(f"export: all formats in {time.time() - started:.0f}s" + (" (reused)" if args.reuse else ""))
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in (".gguf", ".safetensors"):
            print(f"  {path.relative_to(root)}: {path.stat().st_size / 2**20:.1f} MiB")

    tokenizer = AutoTokenizer.from_pretrained(root / "merged")
    chats = prompts(recipe, args.prompts)
    encoded = [
        tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
        for chat in chats
    ]
    print(f"prompts: {len(encoded)} held-out, {min(e.shape[1] for e in encoded)}-{max(e.shape[1] for e in encoded)} tokens")

    def predictions(model, batch, count=None):
        """Last-position logits, and the greedy token at every position, per prompt."""
        last, every = [], []
        with torch.no_grad():
            for ids in batch[:count]:
                logits = model(ids).logits[0].float()
                last.append(logits[-1])
                every.append(logits.argmax(-1))
        return last, every

    merged = AutoModelForCausalLM.from_pretrained(root / "merged", dtype=torch.float32).eval()
    tuned = models.load_model(recipe.model, adapter=export.tuned_weights(recipe)[1], dtype=torch.float32).to("cpu").eval()
    reference, reference_every = predictions(tuned, encoded)
    margins = [logits.topk(2).values for logits in reference]
    margins = [(top[0] - top[1]).item() for top in margins]
    with torch.no_grad():
        difference = max((merged(ids).logits - tuned(ids).logits).abs().max().item() for ids in encoded[:20])
    print(f"merged vs base + adapter (fp32, 20 prompts, every position): max |logit diff| {difference:.3g}")
    del merged, tuned
    print(f"tuned model: top-2 logit margin at the next token below 0.05 on {sum(m < 0.05 for m in margins)} of "
          f"{len(margins)} prompts (smallest {min(margins):.2g})")

    greedy = [logits.argmax().item() for logits in reference]
    positions = sum(len(every) for every in reference_every)
    for path in [] if args.skip_transformers_gguf else sorted((root / "gguf").glob("*.gguf")):
        gguf_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        same_ids = sum(
            gguf_tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"]
            == ids[0].tolist()
            for chat, ids in zip(chats, encoded)
        )
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
        logits, every = predictions(model, encoded)
        agree = [l.argmax().item() == g for l, g in zip(logits, greedy)]
        worst = max((a - b).abs().max().item() for a, b in zip(logits, reference))
        every_agree = sum((a == b).sum().item() for a, b in zip(every, reference_every))
        flips = ", ".join(f"{m:.2g}" for m, ok in zip(margins, agree) if not ok) or "none"
        print(
            f"{path.name} via transformers: greedy next-token agreement {sum(agree)}/{len(greedy)} "
            f"({100 * sum(agree) / len(greedy):.1f}%), max |logit diff| {worst:.3g}; "
            f"every position {every_agree}/{positions} ({100 * every_agree / positions:.1f}%); "
            f"tuned model's top-2 margin where they differ: {flips}; "
            f"GGUF tokenizer ids identical {same_ids}/{len(chats)}, chat template embedded "
            f"{gguf_tokenizer.chat_template == tokenizer.chat_template}"
        )
        del model

    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python: not installed, skipped")
    else:
        import numpy as np

        for path in sorted((root / "gguf").glob("*.gguf")):
            # one thread: llama.cpp's workers spin while waiting, which is very slow on a busy 2-core machine
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=1, logits_all=True, verbose=False)
            agree, every_agree, worst = 0, 0, 0.0
            for ids, g, ref_last, ref_every in zip(encoded, greedy, reference, reference_every):
                llm.reset()
                llm.eval(ids[0].tolist())
                scores = np.asarray(llm.scores[: llm.n_tokens])
                agree += int(scores[-1].argmax() == g)
                every_agree += int((scores.argmax(-1) == ref_every.numpy()).sum())
                worst = max(worst, float(np.abs(scores[-1] - ref_last.numpy()).max()))
            llm.close()
            print(
                f"{path.name} via llama-cpp-python {llama_cpp.__version__}: greedy next-token agreement "
                f"{agree}/{len(greedy)} ({100 * agree / len(greedy):.1f}%), max |logit diff| {worst:.3g}; "
                f"every position {every_agree}/{positions} ({100 * every_agree / positions:.1f}%)"
            )

    from tests.test_export import go_render, modelfile_template

    conversation = [
        {"role": "system", "content": recipe.data.system_prompt or "You are a support assistant."},
        {"role": "user", "content": "My order #4411 has not arrived."},
        {"role": "assistant", "content": "Sorry about that! Standard shipping takes 3-5 business days."},
        {"role": "user", "content": "It has been 9 days."},
        {"role": "assistant", "content": "Then please send us the order number and we will trace it."},
        {"role": "user", "content": "It is 4411, thanks"},
    ]
    modelfile = (root / "gguf" / "Modelfile").read_text()
    ours = go_render(modelfile_template(modelfile), {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in conversation]})
    theirs = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    print(f"Modelfile TEMPLATE vs chat template, 3 turns: identical {ours == theirs} ({len(theirs)} characters)")


if __name__ == "__main__":
    main()
