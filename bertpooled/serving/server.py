"""`bertpooled serve`: MLflow's own scoring server for a logged model, with one guard in front of it.

The app is MLflow's (`mlflow.pyfunc.scoring_server.init`: the same /invocations, /ping, /health and /version as
`mlflow models serve`); what this adds is a request body that is JSON nested too deeply to parse answered with a
400 instead of MLflow's 500 (MLflow's parser catches malformed JSON but not the RecursionError that very deep
nesting raises, so such a body reaches its error handler as a server fault), and an empty batch (`{"inputs": []}`)
answered with no predictions, which MLflow refuses as a missing input for a model whose signature is one
unnamed column (serving/classifier.py). Binds to 127.0.0.1 by default.
"""

from __future__ import annotations

import json

INVOCATIONS = "/invocations"


class RejectTooDeepJson:
    """ASGI middleware: a POST to /invocations whose JSON body nests too deeply for the parser gets a 400."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != INVOCATIONS:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if _too_deep(body):
            await _send_json(send, 400, {
                "error_code": "BAD_REQUEST",
                "message": "the JSON body is nested too deeply to parse: send {\"inputs\": [\"text\", ...]}",
            })
            return
        if len(body) <= EMPTY_BATCH_MAX_BYTES and _empty_batch(body):
            await _send_json(send, 200, {"predictions": []})
            return
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _too_deep(body: bytes) -> bool:
    try:
        json.loads(body)
    except RecursionError:
        return True
    except ValueError:
        return False  # malformed JSON: MLflow's own parser answers it with a 400
    return False


# `{"inputs": [], "params": {"predict_method": "predict_proba"}}` and the like are short; longer bodies are not parsed twice.
EMPTY_BATCH_MAX_BYTES = 256


def _empty_batch(body: bytes) -> bool:
    """A JSON body whose only data is an empty list: `inputs`, `instances` or `dataframe_records` (with or
    without `params`)."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return False
    if not isinstance(payload, dict):
        return False
    data = {key: value for key, value in payload.items() if key != "params"}
    return len(data) == 1 and next(iter(data)) in ("inputs", "instances", "dataframe_records") and data[next(iter(data))] == []


async def _send_json(send, status: int, payload: dict) -> None:
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def app_for(model_uri: str):
    """MLflow's scoring app for the pyfunc model at `model_uri`, behind the nesting guard; a model that cannot be
    loaded is a one-line error."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    from bertpooled.errors import BertpooledError

    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as exc:
        raise BertpooledError(
            f"cannot load model {model_uri} ({str(exc).splitlines()[0][:200]}): pass a logged model's URI, "
            "e.g. runs:/<run id>/model, with MLFLOW_TRACKING_URI pointing at its store"
        ) from None
    return RejectTooDeepJson(scoring_server.init(model))

