"""POST /v1/embeddings: local models only; the forward passes share the model with its batcher."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response

from llmctl.errors import UsageError
from llmctl.serve.openai_api import APIError

if TYPE_CHECKING:
    from llmctl.serve.server import ModelServer


async def embeddings(srv: "ModelServer", body: dict) -> Response:
    from llmctl.embeddings import check_inputs, embed

    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' is required", param="model")
    backend = srv.backends.get(model)
    if backend is None:
        raise APIError(404, f"the model '{model}' is not served here (served: {', '.join(srv.backends)})",
                       "model_not_found", "model")
    if not backend.capabilities.embeddings:
        raise APIError(400, f"the model '{model}' cannot make embeddings (it is a remote model)", param="model")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise APIError(400, "'encoding_format' must be float or base64", param="encoding_format")
    try:
        texts = check_inputs(body.get("input"))
    except UsageError as e:
        raise APIError(400, str(e), param="input") from None
    release = srv.admit()
    if release is None:
        raise APIError(503, "the server is busy: too many requests waiting; retry shortly", "overloaded")
    batcher = srv.batchers.get(model)
    try:
        result = await run_in_threadpool(embed, backend, texts, batcher.lock if batcher else None)
    except UsageError as e:
        raise APIError(400, str(e), param="input") from None
    finally:
        release()
    srv.metrics.usage(result.prompt_tokens, 0)
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(result.encoded(encoding))]
    return JSONResponse({"object": "list", "data": data, "model": model,
                         "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}})
