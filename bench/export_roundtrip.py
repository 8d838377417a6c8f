"""Export round trip on a finished run: every GGUF type in llama.cpp against the tuned model in transformers.

    python bench/export_roundtrip.py recipes/quickstart.yaml [--set output_dir=/tmp/copy] [--prompts 50] [--reuse]

Exports merged + every GGUF type (f16, q8_0, Q6_K, Q5_K_M, Q4_K_M) + the Modelfile (`kit.export.run`, into
`<run>/export/`: point `output_dir` at a copy of the run to keep the original untouched; `--reuse` measures an
existing export), plus llama.cpp's own f16 and q8_0 of the same model beside them (`<run>/export/bench-llama.cpp/`),
which is what kit's own writer (llama-architecture models) is measured against. Then, for each GGUF loaded in
llama.cpp (llama-cpp-python), prints and saves (`<run>/export/gguf/roundtrip.json`, and a table in the GGUF
folder's README.md):
- file size;
- greedy next-token agreement with the tuned model (transformers, fp32) on N held-out prompts (test split, then
  validation), and at every prompt position;
- perplexity of the test split's conversations (every token after the first), next to the tuned model's own;
- merged vs base + adapter: max |logit difference| (fp32, 20 prompts);
- Modelfile: the TEMPLATE rendered for a 3-turn conversation vs the tokenizer's chat template.
Needs llama-cpp-python (`pip install 'llama-cpp-python[server]'`).
"""

from __future__ import annotations

import argparse
import json
import math
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


def log_softmax(rows):
    import numpy as np

    rows = rows.astype(np.float64)
    top = rows.max(-1, keepdims=True)
    return rows - top - np.log(np.exp(rows - top).sum(-1, keepdims=True))


def nll(logits, ids) -> tuple[float, int]:
    """Summed negative log-likelihood of ids[1:] given logits[:-1], and the token count."""
    import numpy as np

    logp = log_softmax(np.asarray(logits[:-1]))
    return float(-logp[np.arange(len(ids) - 1), ids[1:]].sum()), len(ids) - 1


def main() -> None:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import llama_cpp

    from kit import data, export, models
    from kit.recipe import load_recipe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--reuse", action="store_true", help="measure the run's existing export/ instead of exporting")
    args = parser.parse_args()
    torch.manual_seed(0)
    recipe = load_recipe(args.recipe, args.overrides)
    recipe.export.formats = list(export.FORMATS)
    recipe.export.gguf_types = list(export.GGUF_TYPES)
    recipe.export.student = False

    started = time.time()
    root = recipe.run_dir / "export" if args.reuse else export.run(recipe)
    print(f"export: all formats in {time.time() - started:.0f}s" + (" (reused)" if args.reuse else ""), flush=True)
    tokenizer = AutoTokenizer.from_pretrained(root / "merged")
    merged = AutoModelForCausalLM.from_pretrained(root / "merged", dtype=torch.float32).eval()
    side = root / "bench-llama.cpp"
    if not (args.reuse and side.is_dir()):
        side.mkdir(parents=True, exist_ok=True)
        started = time.time()
        export.write_gguf_files(merged, tokenizer, side, recipe.name, ["f16", "q8_0"],
                                base_folder=models.resolve(recipe.model.name), writer="llama.cpp")
        print(f"llama.cpp's converter + quantizer, f16 and q8_0: {time.time() - started:.0f}s", flush=True)

    chats = prompts(recipe, args.prompts)
    encoded = [tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"] for chat in chats]
    tests = [tokenizer.apply_chat_template(c["messages"], return_dict=True)["input_ids"] for c in data.load_split(recipe, "test")]
    print(f"prompts: {len(encoded)} held-out, {min(map(len, encoded))}-{max(map(len, encoded))} tokens; "
          f"perplexity on {len(tests)} test conversations, {sum(map(len, tests))} tokens", flush=True)

    tuned = models.load_model(recipe.model, adapter=export.tuned_weights(recipe)[1], dtype=torch.float32).to("cpu").eval()
    with torch.no_grad():
        difference = max((merged(torch.tensor([ids])).logits - tuned(torch.tensor([ids])).logits).abs().max().item()
                         for ids in encoded[:20])
        reference = [merged(torch.tensor([ids])).logits[0].numpy() for ids in encoded]
        total, count = 0.0, 0
        for ids in tests:
            value, n = nll(merged(torch.tensor([ids])).logits[0].numpy(), ids)
            total, count = total + value, count + n
    del tuned, merged
    reference_ppl = math.exp(total / count)
    print(f"merged vs base + adapter (fp32, 20 prompts, every position): max |logit diff| {difference:.3g}")
    print(f"tuned model (transformers, fp32): test perplexity {reference_ppl:.3f}", flush=True)
    greedy = [int(row[-1].argmax()) for row in reference]
    margins = [float(np.sort(row[-1])[-1] - np.sort(row[-1])[-2]) for row in reference]
    positions = sum(len(row) for row in reference)

    results = {"prompts": len(encoded), "test_tokens": count, "reference_perplexity": reference_ppl,
               "merged_vs_adapter_max_logit_diff": difference, "files": {}}
    files = sorted((root / "gguf").glob("*.gguf"), key=lambda p: -p.stat().st_size) + sorted(side.glob("*.gguf"))
    for path in files:
        started = time.time()
        # one thread: llama.cpp's workers spin while waiting, which is very slow on a busy 2-core machine
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_threads=1, logits_all=True, verbose=False)
        agree, every_agree, flips = 0, 0, []
        for ids, g, ref, margin in zip(encoded, greedy, reference, margins):
            llm.reset()
            llm.eval(ids)
            scores = np.asarray(llm.scores[: llm.n_tokens])
            agree += int(scores[-1].argmax() == g)
            if scores[-1].argmax() != g:
                flips.append(round(margin, 3))
            every_agree += int((scores.argmax(-1) == ref.argmax(-1)).sum())
        total, n_total = 0.0, 0
        for ids in tests:
            llm.reset()
            llm.eval(ids)
            value, n = nll(np.asarray(llm.scores[: llm.n_tokens]), ids)
            total, n_total = total + value, n_total + n
        llm.close()
        label = ("llama.cpp " if path.parent == side else "") + path.stem.removeprefix(f"{recipe.name}-")
        row = {"file": str(path.relative_to(root)), "mib": path.stat().st_size / 2**20, "agreement": agree / len(greedy),
               "every_position": every_agree / positions, "perplexity": math.exp(total / n_total),
               "flipped_margins": flips}
        results["files"][label] = row
        print(f"{label:>16}: {row['mib']:7.1f} MiB  next token {agree}/{len(greedy)} ({100 * row['agreement']:.0f}%)  "
              f"every position {100 * row['every_position']:.1f}%  test perplexity {row['perplexity']:.3f}  "
              f"(tuned model's top-2 margin where they differ: {flips or 'none'}; {time.time() - started:.0f}s)", flush=True)

    (root / "gguf" / "roundtrip.json").write_text(json.dumps(results, indent=2) + "\n")
    card = root / "gguf" / "README.md"
    if card.is_file():
        card.write_text(export.gguf_card_with_results(card.read_text(), results))

    from tests.test_export import go_render, modelfile_template, ollama_values

    conversation = [
        {"role": "system", "content": recipe.data.system_prompt or "You are a support assistant."},
        {"role": "user", "content": "My order #4411 has not arrived."},
        {"role": "assistant", "content": "Sorry about that! Standard shipping takes 3-5 business days."},
        {"role": "user", "content": "It has been 9 days."},
        {"role": "assistant", "content": "Then please send us the order number and we will trace it."},
        {"role": "user", "content": "It is 4411, thanks"},
    ]
    modelfile = (root / "gguf" / "Modelfile").read_text()
    ours = go_render(modelfile_template(modelfile), ollama_values(conversation))
    theirs = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    print(f"Modelfile TEMPLATE vs chat template, 3 turns: identical {ours == theirs} ({len(theirs)} characters)")


if __name__ == "__main__":
    main()
