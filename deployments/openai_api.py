"""OpenAI-compatible endpoints over the served champion, mounted at /v1 by deployments/service.py.

    GET  /v1/models             the champion as one model, id `<name>:<version>`
    POST /v1/completions        continue `prompt` as given
    POST /v1/chat/completions   answer `messages`, rendered with the tokenizer's chat template

Both take `max_tokens`, `temperature` (default 1; 0 = greedy), `top_p`, `stop` (a string or up to
four; the text ends before the first), `seed`, `n` (1 only) and `stream` (server-sent events in
OpenAI's chunk format, a piece of text per chunk as the model writes it, then `data: [DONE]`).
`model` is the served name (whichever version is the champion) or `<name>:<version>`.
The answer's `id` is the generation id `/feedback` takes; a stream's is recorded before its
finishing chunk. `usage` counts the prompt as the model saw it (with bos) and the answer's
tokens (with the one that ended it).

A prompt longer than the context left beside `max_tokens` loses its start, as everywhere in
llmflow (`model.chat.fit_prompt` with the tokenizer's `truncation_side`); the limits of the
service (bearer token, body size, `max_prompt_chars`, `max_new_tokens`) hold as for /generate.
Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: 400 for a
malformed request, 401 for the token, 404 for an unknown model, 413 for a prompt over its limit,
503 with no champion to serve.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException

from deployments.champion import Champion
from deployments.openai_schemas import ChatRequest, CompletionRequest, Sampling
from llmflow.config import ServeConfig
from llmflow.feedback import FeedbackStore, new_generation_id

log = logging.getLogger("llmflow.serve")

CODES = {401: "invalid_api_key", 404: "not_found", 413: "request_too_large", 503: "no_model"}


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    kind = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}.get(status)
    kind = kind or ("server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code or CODES.get(status)}}


def openai_app(
    *, champion: Champion, feedback: FeedbackStore, settings: ServeConfig, name: str, authorized: Callable
) -> FastAPI:
    """The /v1 application: mount it on the service's app, which keeps the body limit, and call
    its `state.close()` when the service stops. With `max_batch_size` over 1, concurrent
    requests are generated together (model.batching); `state.batching()` counts the batches."""
    cfg, fb = settings, feedback
    api = FastAPI(title="llmflow: OpenAI-compatible API", dependencies=[Depends(authorized)])
    batcher = None
    if cfg.max_batch_size > 1:
        from model.batching import Batcher

        batcher = Batcher(cfg.max_batch_size, cfg.batch_wait_ms / 1000, lock=champion.generate_lock)

    def batching() -> dict[str, Any]:
        counts = {"batches": batcher.batches, "requests": batcher.streams} if batcher else {}
        return {"max_batch_size": cfg.max_batch_size, **counts}

    api.state.batching = batching
    api.state.close = batcher.close if batcher else lambda: None

    @api.exception_handler(APIError)
    async def api_error(request, exc: APIError):
        return JSONResponse(error_body(exc.status, exc.message, exc.param, exc.code), status_code=exc.status)

    @api.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):  # the token, no champion, an unknown path
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), exc.status_code, exc.headers)

    @api.exception_handler(Exception)
    async def failed(request, exc: Exception):  # logged by uvicorn; the client gets the shape it reads
        return JSONResponse(error_body(500, f"generation failed: {exc}"), status_code=500)

    @api.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError):
        # the place and the reason, never the input (a NaN or a lone surrogate cannot be written back)
        errors = exc.errors()
        places = [".".join(str(p) for p in e.get("loc", ()) if p != "body") for e in errors]
        reasons = [str(e["ctx"]["error"]) if e["type"] == "value_error" else e["msg"] for e in errors]
        message = "; ".join(f"{p}: {r}" if p else r for p, r in zip(places, reasons, strict=True))
        return JSONResponse(error_body(400, message, places[0] or None if places else None), status_code=400)

    def served(req: Sampling) -> tuple[str, Any, Any]:
        """(version, model, tokenizer) of the champion `req.model` names; 404 for another."""
        version, model, tokenizer = champion.snapshot()
        if req.model not in (name, f"{name}:{version}"):
            raise APIError(
                404,
                f"model {req.model!r} is not served here: this service serves {name}:{version} "
                f"(ask for {name!r} to get whichever version is the champion)",
                param="model",
                code="model_not_found",
            )
        return version, model, tokenizer

    def answer_length(req: Sampling, model, tokenizer) -> int:
        from model.generate import prompt_budget

        max_new = req.max_tokens or min(cfg.default_new_tokens, cfg.max_new_tokens)
        if max_new > cfg.max_new_tokens:
            raise APIError(
                400,
                f"max_tokens {max_new} is over this service's limit of {cfg.max_new_tokens}",
                "max_tokens",
            )
        if prompt_budget(model, tokenizer, max_new) < 1:
            context = model.config.max_position_embeddings
            raise APIError(
                400,
                f"max_tokens {max_new} leaves no room for a prompt in the model's {context} tokens",
                "max_tokens",
            )
        return max_new

    def too_long(chars: int) -> None:
        if chars > cfg.max_prompt_chars:
            raise APIError(
                413, f"the prompt has {chars} characters; the limit is {cfg.max_prompt_chars}", "prompt"
            )

    @api.get("/models")
    def models() -> dict[str, Any]:
        version, _, _ = champion.snapshot()
        created = int(champion.loaded_at or time.time())
        return {
            "object": "list",
            "data": [
                {"id": f"{name}:{version}", "object": "model", "created": created, "owned_by": "llmflow"}
            ],
        }

    @api.post("/completions")
    def completions(req: CompletionRequest):
        version, model, tokenizer = served(req)
        too_long(len(req.prompt))
        return respond("text_completion", req, (version, model, tokenizer), req.prompt, req.prompt, None)

    @api.post("/chat/completions")
    def chat_completions(req: ChatRequest):
        version, model, tokenizer = served(req)
        messages = req.as_chat()
        too_long(sum(len(m["content"]) for m in messages))
        from model.chat import render_chat

        try:
            text = render_chat(tokenizer, messages)
        except Exception as e:  # a model's own template may refuse a role or an order of turns
            raise APIError(400, f"the model's chat template refused these messages: {e}", "messages") from e
        # one user message is kept for feedback as its text, as /generate keeps a prompt; a
        # conversation as rendered, which the fine-tune takes as it is (model.sft_data.render_prompt)
        single = len(messages) == 1 and messages[0]["role"] == "user"
        recorded = messages[0]["content"] if single else text
        return respond("chat.completion", req, (version, model, tokenizer), text, recorded, len(messages))

    def respond(kind: str, req: Sampling, champ: tuple, text: str, recorded: str, messages: int | None):
        """The answer to `text` as one body, or as a stream of chunks; `recorded` is the prompt
        kept with it for feedback."""
        from model.streaming import TextStream

        version, model, tokenizer = champ
        max_new = answer_length(req, model, tokenizer)
        stream = TextStream(
            model,
            tokenizer,
            text,
            max_new_tokens=max_new,
            temperature=req.temperature,
            top_p=req.top_p if req.top_p < 1 else None,
            seed=req.seed,
            stop=req.stop,
            lock=champion.generate_lock,
            runner=batcher,
        )
        params = {
            "api": kind,
            "max_tokens": max_new,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "stop": req.stop,
            "seed": req.seed,
            "stream": req.stream,
            "prompt_truncated": stream.truncated,
            **({"messages": messages} if messages is not None else {}),
        }
        head = {"object": kind, "created": int(time.time()), "model": f"{name}:{version}"}
        if not req.stream:
            answer = "".join(stream)
            gid = fb.record_generation(version, recorded, answer, params)
            if kind == "chat.completion":
                content: dict[str, Any] = {"message": {"role": "assistant", "content": answer}}
            else:
                content = {"text": answer}
            choice = {"index": 0, **content, "logprobs": None, "finish_reason": stream.finish_reason}
            return {"id": gid, **head, "choices": [choice], "usage": usage(stream)}
        gid = new_generation_id()
        head = {"id": gid, **head, "object": f"{kind}.chunk" if kind == "chat.completion" else kind}

        def chunk(piece: str | None, finish: str | None = None, role: bool = False) -> str:
            if kind == "chat.completion":
                delta = {"role": "assistant", "content": ""} if role else {}
                if piece is not None:
                    delta["content"] = piece
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
            return sse({**head, "choices": [choice]})

        async def events():
            try:
                if kind == "chat.completion":
                    yield chunk(None, role=True)
                async for piece in iterate_in_threadpool(iter(stream)):
                    yield chunk(piece)
                await run_in_threadpool(fb.record_generation, version, recorded, stream.text, params, gid)
                yield chunk(None, stream.finish_reason)
                if req.stream_options is not None and req.stream_options.include_usage:
                    yield sse({**head, "choices": [], "usage": usage(stream)})
                yield "data: [DONE]\n\n"
            except Exception as e:  # the status line has gone out: the error travels as an event
                log.error("stream %s failed: %s", gid, e)
                yield sse(error_body(500, f"generation failed: {e}"))
            finally:
                stream.cancel()  # a client gone mid-answer frees the model within a step

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    return api


def usage(stream) -> dict[str, int]:
    return {
        "prompt_tokens": stream.prompt_tokens,
        "completion_tokens": stream.completion_tokens,
        "total_tokens": stream.prompt_tokens + stream.completion_tokens,
    }


def sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
