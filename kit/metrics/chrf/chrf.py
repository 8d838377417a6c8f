"""Corpus chrF (character n-gram F-score) of generated answers against reference answers.

kit ships this as a local `evaluate` module so that `evaluate.load` works offline; the scoring itself is
the maintained `sacrebleu` package (character 6-grams, beta 2, whitespace ignored). chrF gives partial
credit for near-miss words ("refund" / "refunds") that BLEU counts as wrong.
"""

import datasets
import evaluate
import sacrebleu

_DESCRIPTION = "Corpus chrF (sacrebleu defaults: character 6-grams, beta=2), on a 0-100 scale."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated answers.
    references: list of reference answers, one per prediction.
Returns:
    chrf: corpus chrF in [0, 100].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Chrf(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Popovic, chrF: character n-gram F-score for automatic MT evaluation, 2015.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        if not predictions:
            return {"chrf": 0.0}
        return {"chrf": sacrebleu.metrics.CHRF().corpus_score(list(predictions), [list(references)]).score}
