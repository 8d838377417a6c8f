"""kit.gate: the promotion decision on metric rows, with the issue's numbers."""

from kit import gate

TUNED = {"eval_loss": 2.22, "rouge_l": 0.189, "similarity": 0.585, "intent_accuracy": 0.74,
         "fact_recall": 0.40, "invented_facts": 12, "invented_contacts": 3}


def test_refuses_a_model_that_invents_more_contact_details():
    preferred = {**TUNED, "eval_loss": 2.20, "fact_recall": 0.45, "invented_facts": 9, "invented_contacts": 4}
    decision = gate.decide(preferred, TUNED, "preferred", "tuned")
    assert not decision.promoted and decision.chosen == "tuned"
    assert [c.metric for c in decision.failed] == ["invented_contacts"]
    assert decision.reasons() == ["invented contacts rose: 4 > 3 (allowed <= 3)"]
    assert "**tuned stays**" in decision.markdown() and "| invented contacts ↓ | 4 | 3 | <= 3 | **fail** |" in decision.markdown()


def test_refuses_the_low_loss_student_that_answers_the_wrong_question():
    student = {**TUNED, "eval_loss": 1.75, "intent_accuracy": 0.31, "similarity": 0.39}
    decision = gate.decide(student, TUNED, "student", "tuned")
    assert not decision.promoted
    assert [c.metric for c in decision.failed] == ["intent_accuracy", "similarity"]
    assert decision.reasons()[0] == "intent accuracy dropped: 0.310 < 0.740 (allowed >= 0.710)"
    assert next(c for c in decision.checks if c.metric == "eval_loss").status == "pass"
    assert decision.summary().startswith("tuned stays: student failed intent accuracy dropped")


def test_promotes_a_model_better_on_every_check():
    preferred = {**TUNED, "eval_loss": 2.25, "fact_recall": 0.48, "invented_facts": 6, "invented_contacts": 0,
                 "intent_accuracy": 0.76, "similarity": 0.60}
    decision = gate.decide(preferred, TUNED)
    assert decision.promoted and decision.chosen == "preferred" and decision.reasons() == []
    assert decision.summary() == "preferred is promoted over tuned: it passed every check"
    assert decision.as_dict()["promoted"] is True


def test_loss_beyond_the_margin_and_a_recall_drop_fail_with_their_numbers():
    worse = {**TUNED, "eval_loss": 2.40, "fact_recall": 0.39}
    decision = gate.decide(worse, TUNED)
    assert [c.metric for c in decision.failed] == ["fact_recall", "eval_loss"]
    assert "eval loss rose: 2.4 > 2.22 (allowed <= 2.27)" in decision.reasons()
    looser = gate.decide(worse, TUNED, margins=gate.Margins(eval_loss=0.2, fact_recall=0.02))
    assert looser.promoted
    strict = gate.Margins(contradicted_facts=0)
    assert not gate.decide({**TUNED, "contradicted_facts": 5}, {**TUNED, "contradicted_facts": 4}, margins=strict).promoted
    assert gate.decide({**TUNED, "contradicted_facts": 5}, {**TUNED, "contradicted_facts": 4}).promoted  # off by default


def test_a_metric_measured_for_one_model_only_fails_and_nothing_measured_refuses():
    decision = gate.decide({k: v for k, v in TUNED.items() if k != "fact_recall"}, TUNED)
    assert not decision.promoted
    assert decision.failed[0].line() == "fact recall: not measured for preferred, so the two cannot be compared"
    no_facts = {k: v for k, v in TUNED.items() if k != "fact_recall"}
    assert gate.decide(no_facts, no_facts).promoted  # neither measured it: skipped, the rest passes
    assert not gate.decide({}, {}).promoted and gate.decide({}, {}).reasons() == ["no metric was measured for both models"]
