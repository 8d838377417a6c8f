"""Accuracy, macro precision / recall / F1 and the confusion matrix of predicted intent labels.

kit ships this as a local `evaluate` module so that `evaluate.load` works offline; the scoring itself is
scikit-learn's `sklearn.metrics`. Macro averages weigh every label equally (a rare intent counts as much
as a frequent one) over the labels that occur in the references or the predictions; a label never
predicted has precision 0.
"""

import datasets
import evaluate
from sklearn import metrics

_DESCRIPTION = "Accuracy and macro precision, recall and F1 of string labels (scikit-learn)."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted labels (strings).
    references: list of true labels, one per prediction.
Returns:
    accuracy: share of exact matches in [0, 1].
    macro_precision, macro_recall, macro_f1: unweighted means over labels, in [0, 1].
    labels: the sorted labels, the order of the confusion matrix.
    confusion_matrix: rows are true labels, columns predicted labels (counts).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Pedregosa et al., Scikit-learn: Machine Learning in Python, JMLR 2011.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        labels = sorted(set(references) | set(predictions))
        precision, recall, f1, _ = metrics.precision_recall_fscore_support(
            references, predictions, labels=labels, average="macro", zero_division=0
        )
        matrix = metrics.confusion_matrix(references, predictions, labels=labels)
        return {
            "accuracy": float(metrics.accuracy_score(references, predictions)),
            "macro_precision": float(precision),
            "macro_recall": float(recall),
            "macro_f1": float(f1),
            "labels": labels,
            "confusion_matrix": matrix.tolist(),
        }
