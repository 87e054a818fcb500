"""MLflow's classifier convention for the logged models: the signature, the input column and the outputs.

Like MLflow's scikit-learn models (`mlflow.sklearn`'s `predict_method` param): `predict` gives one column of
labels, `predict_method="predict_proba"` the (n, 2) probabilities of classes 0 and 1. serving/reference.py
keeps its own copy of `texts_of` and `output` (it imports nothing from bertpooled, so it serves wherever
scikit-learn does); tests/test_serving.py checks that both copies behave the same. The signature (labels out,
the param, no input schema: MLflow hands `predict` the texts as given) is logged by tracking/models.py.
"""

from __future__ import annotations

import numpy as np

from bertpooled.contract import PREDICT, PREDICT_METHOD, PREDICT_METHODS, PREDICT_PROBA, THRESHOLD


def texts_of(model_input) -> list[str]:
    """The texts of whatever MLflow hands `predict`: a DataFrame (its first column; none: no texts), a Series,
    an array or a list. A text that is not a string (null, a number, NaN from an empty CSV
    field, an object) is refused naming its position: it was predicted as the text "None" or "nan" before."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        model_input = model_input.iloc[:, 0] if model_input.shape[1] else []
    texts = list(model_input)
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            from mlflow.exceptions import MlflowException

            # MLflow's scoring server answers this with a 400 carrying the line, for every content type.
            shown = repr(text)[:40]
            raise MlflowException.invalid_parameter_value(
                f"text {position} is {type(text).__name__} {shown}, not a string: send every text as a string"
            )
    return texts


def output(probs: np.ndarray, params: dict | None):
    """Labels (int64, 1 = positive) or, for `predict_method="predict_proba"`, the (n, 2) class probabilities."""
    from mlflow.exceptions import MlflowException

    method = (params or {}).get(PREDICT_METHOD) or PREDICT
    if method == PREDICT:
        return (probs >= THRESHOLD).astype(np.int64)
    if method == PREDICT_PROBA:
        return np.column_stack([1.0 - probs, probs]).reshape(len(probs), 2)
    # MLflow's scoring server answers an invalid parameter value with a 400 carrying this line.
    raise MlflowException.invalid_parameter_value(
        f"predict_method {method!r} is not one of {', '.join(PREDICT_METHODS)}: pass "
        f'"params": {{"predict_method": "predict_proba"}} for probabilities, or leave it out for labels'
    )
