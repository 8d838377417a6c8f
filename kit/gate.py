"""The promotion gate: a candidate model (preferred, student) replaces the tuned one only if it is no worse.

    from kit import gate
    decision = gate.decide(metrics["models"]["preferred"], metrics["models"]["tuned"], "preferred", "tuned")
    decision.promoted          # False
    decision.reasons()         # ["invented contacts rose: 3 > 0 (allowed up to 0)"]
    decision.markdown()        # the report's section: the decision and every check with its numbers

A pure function over two rows of metrics (the dicts of `eval/metrics.json`, or any mapping with the same keys):
no model is loaded. The candidate is promoted only when every check that both rows measured passes:

| check | passes when (candidate vs incumbent) |
| --- | --- |
| `fact_recall` | does not drop by more than `Margins.fact_recall` (default 0) |
| `invented_facts` | does not rise by more than `Margins.invented_facts` (default 0) |
| `invented_contacts` | does not rise by more than `Margins.invented_contacts` (default 0) |
| `eval_loss` | does not rise by more than `Margins.eval_loss` nats (default 0.05) |
| `intent_accuracy` | does not drop by more than `Margins.intent_accuracy` (default 0.03) |
| `similarity` | does not drop by more than `Margins.similarity` (default 0.02) |

A lower loss alone never promotes: a distilled student with eval loss 1.75 (tuned 2.22) but intent accuracy
0.31 (tuned 0.74) answers the wrong question in fluent company style, and is refused. A margin set to None
turns its check off; `rouge_l` and `contradicted_facts` (see kit.facts) are off unless given one. A check that only one row measured fails (the models were not evaluated alike); one
that neither measured is listed as skipped; and a decision with no check at all refuses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Margins:
    """How much worse than the incumbent a candidate may be on each metric (None: no check)."""

    fact_recall: float | None = 0.0
    invented_facts: float | None = 0.0
    invented_contacts: float | None = 0.0
    eval_loss: float | None = 0.05
    intent_accuracy: float | None = 0.03
    similarity: float | None = 0.02
    rouge_l: float | None = None
    contradicted_facts: float | None = None  # off by default: it also counts true but unrelated values


# metric -> (words in the report, True when higher is better)
CHECKS = {
    "fact_recall": ("fact recall", True),
    "invented_facts": ("invented facts", False),
    "invented_contacts": ("invented contacts", False),
    "eval_loss": ("eval loss", False),
    "intent_accuracy": ("intent accuracy", True),
    "similarity": ("similarity", True),
    "rouge_l": ("ROUGE-L", True),
    "contradicted_facts": ("contradicted facts", False),
}


@dataclass(frozen=True)
class Check:
    """One metric compared: the two values, the worst value allowed, and the outcome."""

    metric: str
    candidate: float | None
    incumbent: float | None
    limit: float | None  # the worst candidate value that still passes
    status: str  # "pass", "fail" or "skipped"
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.status != "fail"

    def line(self) -> str:
        words, higher = CHECKS[self.metric]
        if self.status == "skipped":
            return f"{words}: not measured for either model"
        if self.note:
            return f"{words}: {self.note}"
        verb = ("dropped" if self.candidate < self.incumbent else "held") if higher else (
            "rose" if self.candidate > self.incumbent else "held")
        sign = ">=" if higher else "<="
        relation = "<" if higher else ">"
        if self.status == "fail":
            return (f"{words} {verb}: {_fmt(self.candidate)} {relation} {_fmt(self.incumbent)} "
                    f"(allowed {sign} {_fmt(self.limit)})")
        return f"{words} {verb}: {_fmt(self.candidate)} vs {_fmt(self.incumbent)} (allowed {sign} {_fmt(self.limit)})"


@dataclass(frozen=True)
class Decision:
    """The gate's verdict on a candidate against the incumbent, with every check and its numbers."""

    candidate: str
    incumbent: str
    promoted: bool
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if check.status == "fail"]

    @property
    def chosen(self) -> str:
        """The label of the model `kit.chat` and `kit.export` should use by default."""
        return self.candidate if self.promoted else self.incumbent

    def reasons(self) -> list[str]:
        """One line per failed check (empty when promoted)."""
        if not self.promoted and not any(c.status != "skipped" for c in self.checks):
            return ["no metric was measured for both models"]
        return [check.line() for check in self.failed]

    def summary(self) -> str:
        """One line for the terminal."""
        if self.promoted:
            return f"{self.candidate} is promoted over {self.incumbent}: it passed every check"
        return f"{self.incumbent} stays: {self.candidate} failed " + "; ".join(self.reasons())

    def markdown(self) -> str:
        """The report's section: a headline and a table of the checks."""
        headline = (f"**{self.candidate} is promoted** over {self.incumbent}." if self.promoted else
                    f"**{self.incumbent} stays**: {self.candidate} is refused ({'; '.join(self.reasons())}).")
        lines = [f"### Gate: {self.candidate} vs {self.incumbent}", "", headline, "",
                 f"| check | {self.candidate} | {self.incumbent} | allowed | result |", "| --- | --- | --- | --- | --- |"]
        for check in self.checks:
            words, higher = CHECKS[check.metric]
            allowed = "" if check.limit is None else f"{'>=' if higher else '<='} {_fmt(check.limit)}"
            result = {"pass": "pass", "fail": "**fail**", "skipped": "not measured"}[check.status]
            lines.append(f"| {words} {'↑' if higher else '↓'} | {_fmt(check.candidate)} | {_fmt(check.incumbent)} | "
                         f"{allowed} | {result} |")
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict:
        """JSON-ready, for `metrics.json` (`gate` key)."""
        return {"candidate": self.candidate, "incumbent": self.incumbent, "promoted": self.promoted,
                "chosen": self.chosen, "reasons": self.reasons(), "checks": [asdict(c) for c in self.checks]}


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.4g}" if abs(value) >= 1 else f"{value:.3f}"
    return str(int(value)) if isinstance(value, float) else str(value)


def _number(row: Mapping, metric: str) -> float | None:
    value = row.get(metric) if isinstance(row, Mapping) else getattr(row, metric, None)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return value


def decide(candidate: Mapping, incumbent: Mapping, candidate_label: str = "preferred",
           incumbent_label: str = "tuned", margins: Margins = Margins()) -> Decision:
    """Promote `candidate` over `incumbent` only when no enabled check fails (see the module docstring)."""
    checks = []
    for metric, (_, higher) in CHECKS.items():
        margin = getattr(margins, metric)
        if margin is None:
            continue
        new, old = _number(candidate, metric), _number(incumbent, metric)
        if new is None and old is None:
            checks.append(Check(metric, None, None, None, "skipped"))
            continue
        if new is None or old is None:
            missing = candidate_label if new is None else incumbent_label
            checks.append(Check(metric, new, old, None, "fail", f"not measured for {missing}, so the two cannot be compared"))
            continue
        limit = old - margin if higher else old + margin
        ok = new >= limit if higher else new <= limit
        checks.append(Check(metric, new, old, limit, "pass" if ok else "fail"))
    measured = any(check.status != "skipped" for check in checks)
    promoted = measured and not any(check.status == "fail" for check in checks)
    return Decision(candidate_label, incumbent_label, promoted, checks)
