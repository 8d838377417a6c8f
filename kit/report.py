"""The evaluation report: `report.md` tables, the comparison bar chart and the confusion matrices.

Reads `kit.eval`'s results (one row of metrics per model) and writes nothing else; a new column is one
entry in the tables below.
"""

from __future__ import annotations

import math
from pathlib import Path

from kit.gate import Decision
from kit.generate import Generation
from kit.recipe import Recipe
from kit.scoring import Judge, intent_of


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
FACTS = [("fact_recall", "fact recall ↑", 4), ("invented_facts", "invented facts ↓", 0),
         ("invented_contacts", "invented contacts ↓", 0), ("contradicted_facts", "contradicted facts ↓", 0)]
COST = [("parameters", "parameters", 0), ("size_mb", "size MB", 1), ("answer_words", "answer words", 1),
        ("answer_tokens", "answer tokens", 1), ("latency_s", "latency s", 3), ("tokens_per_s", "tokens/s", 1)]
OVERFIT = [("train_loss", "train loss", 4), ("validation_loss", "validation loss", 4), ("overfit_gap", "gap", 4),
           ("overfit", "overfitting", 0)]


def _ranking_label(results: dict[str, dict]) -> str:
    for label in ("tuned", "student"):
        if label in results:
            return label
    return list(results)[-1]


def report_markdown(recipe: Recipe, payload: dict, judge: Judge, generations: dict[str, Generation], items: dict[str, list[dict]],
                    decisions: list[Decision] = ()) -> str:
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
    if any("fact_recall" in row for row in results.values()):
        lines += ["## Facts", "", *_table(results, FACTS), "",
                  "Fact recall: the reference answers' checkable facts (amounts, durations, limits, menu paths, plans, "
                  "URLs, emails, phones) that the answer states. Invented: facts that appear in no training answer (the "
                  "company never said them); invented contacts are the phones, emails and URLs among them. "
                  "Contradicted: a value where the reference states another of the same kind.", ""]
        for label, row in results.items():
            for fact in row.get("invented_list", [])[:8]:
                kind = "contact" if fact["contact"] else fact["kind"]
                lines.append(f"- {label}, `{fact['id']}`: invented {kind} `{fact['text']}`")
        lines.append("")
    for decision in decisions:
        lines += [decision.markdown(), ""]
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
                invented = item.get("facts", {}).get("invented", [])
                note = f"; invented: {', '.join(invented)}" if invented else ""
                lines.append(f"- **{name}** (similarity {item['similarity']:.3f}, ROUGE-L {item['rouge_l']:.3f}{note}): "
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

    chosen = QUALITY + [(k, f"intent {t}", d) for k, t, d in INTENT[:1] + INTENT[3:]] + PHRASES[:1] + FACTS[:3] + LEAKS[:1] + COST[5:]
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
