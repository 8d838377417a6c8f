"""Corpus BLEU of generated answers against reference answers.

kit ships this as a local `evaluate` module so that `evaluate.load` works offline; the scoring itself is
the maintained `sacrebleu` package (13a tokenization, exponential smoothing, one reference per answer).
"""

import datasets
import evaluate
import sacrebleu

_DESCRIPTION = "Corpus BLEU (sacrebleu defaults: 13a tokenization, exp smoothing), on a 0-100 scale."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated answers.
    references: list of reference answers, one per prediction.
Returns:
    bleu: corpus BLEU in [0, 100].
    brevity_penalty: the brevity penalty in [0, 1].
    precisions: the four n-gram precisions in [0, 100].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Bleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Papineni et al., BLEU, 2002; Post, A Call for Clarity in Reporting BLEU Scores, 2018.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        if not predictions:
            return {"bleu": 0.0, "brevity_penalty": 0.0, "precisions": [0.0] * 4}
        score = sacrebleu.metrics.BLEU().corpus_score(list(predictions), [list(references)])
        return {"bleu": score.score, "brevity_penalty": score.bp, "precisions": list(score.precisions)}
