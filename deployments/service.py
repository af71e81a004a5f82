"""The HTTP service over the registry's champion model, and the feedback that retrains it.

Endpoints (JSON; all but /health take `Authorization: Bearer <token>` when a token is set):

    POST /generate   {prompt, system?, max_new_tokens?, temperature?, top_p?, top_k?, seed?}
                     -> {id, text, model_version}
    POST /feedback   {generation_id | prompt+response+model_version, rating?, scale?,
                      correction?, preferred?} -> 201 {id, retrain}
                     rating: scale "thumbs" (default) takes -1, 0, 1; scale "stars" takes 1..5.
    GET  /feedback/stats   feedback not yet used by a retrain, and the pending retrain
    GET  /model      the served champion (version, path, when loaded)
    GET  /health     liveness: 200 while the process runs, whether a model is loaded, and
                     whether retrains can be handed to Prefect (`retrain: {enabled, reason}`)
    /v1/models, /v1/completions, /v1/chat/completions
                     OpenAI's API over the same champion, token and limits, errors in OpenAI's
                     shape; an answer's id is a generation id (deployments/openai_api.py)

Errors are 4xx with a `detail` that says why: 401 (token), 404 (unknown generation id),
409 (generation/version mismatch), 413 (body, prompt or answer over its limit), 422 (invalid
fields, max_new_tokens over the limit, an unknown model version), 429 (a client's feedback over
its rate, with Retry-After); 503 when no champion is loaded.

Safe by default: `run` binds loopback unless told otherwise, and refuses any other address
without a token (deployments/access.py: `BindError`, exit code 2 from `llmflow serve`).

The model is the registry's champion, or any pluggable source, reloaded when it changes
(deployments/champion.py); the request bodies are in deployments/service_schemas.py.

Feedback goes to the durable store (llmflow/feedback.py). Each item emits
`llmflow.feedback.received`; when the new feedback passes the threshold, the service claims a
retrain, exports the examples as a `feedback` artifact and emits
`llmflow.feedback.threshold_reached` on resource `llmflow.model.<name>`, which the `finetune`
deployment's trigger picks up. It does so only while a Prefect server with that trigger is there
(deployments/handoff.py, checked at start-up, every `retrain_check_seconds` and at each claim);
otherwise feedback is stored unclaimed for a later retrain. The emitter and the check are
injectable (tests capture events).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import math
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from deployments.access import check_bind, serve_token
from deployments.champion import Champion, ModelSource, registry_source
from deployments.handoff import Check, Handoff, prefect_api_url, prefect_check
from deployments.limits import BodyLimit, RateLimit
from deployments.openai_api import error_body, openai_app
from deployments.service_schemas import FeedbackRequest, GenerateRequest, GenerateResponse
from llmflow import events
from llmflow.config import PipelineConfig, ServeConfig
from llmflow.feedback import FeedbackStore, ThresholdPolicy
from llmflow.store import ArtifactStore
from tasks import mbr_evidence

log = logging.getLogger("llmflow.serve")

Emitter = Callable[..., Any]


def prefect_emitter(event: str, resource: dict[str, str], payload: dict[str, Any]) -> Any:
    """Emit to the Prefect server at PREFECT_API_URL; without one, nothing (never a temporary server)."""
    if prefect_api_url() is None:
        return None
    from prefect.events import emit_event

    return emit_event(event=event, resource=resource, payload=payload)


def body_limit_error(path: str, message: str) -> dict[str, Any]:
    """A body over the limit: OpenAI's error shape under /v1, `detail` elsewhere."""
    return error_body(413, message) if path.startswith("/v1/") else {"detail": message}


def create_app(
    settings: ServeConfig | PipelineConfig | None = None,
    *,
    name: str | None = None,
    home: str | None = None,
    model_source: ModelSource | None = None,
    feedback: FeedbackStore | None = None,
    emit: Emitter | None = None,
    retrain_check: Check | None = None,
    device: str | None = None,
) -> FastAPI:
    """The service. Defaults: the registry's champion of `name`, the feedback store of
    `settings.feedback_url` (or $LLMFLOW_FEEDBACK_URL, or SQLite under LLMFLOW_HOME), Prefect
    events, and the Prefect server's automations to decide whether a retrain can be handed off.
    Tests pass their own `model_source`, `feedback`, `emit` and `retrain_check`."""
    if isinstance(settings, PipelineConfig):
        name = name or settings.name
        settings = settings.serve
    cfg = settings or ServeConfig()
    name = name or "llmflow"
    store = ArtifactStore(home)
    fb = feedback or FeedbackStore(cfg.feedback_url, home=home)
    emit = emit or prefect_emitter
    token = serve_token(cfg)
    policy = ThresholdPolicy.from_config(cfg)
    handoff = Handoff(retrain_check or prefect_check(name), cfg.retrain_check_seconds)
    limiter = RateLimit(cfg.feedback_per_minute, cfg.feedback_burst) if cfg.feedback_per_minute else None
    resource = {"prefect.resource.id": events.resource_id("model", name), "prefect.resource.name": name}

    def champion_changed(version: str) -> None:
        n = fb.finish_pending(name, "done", note=f"champion is now version {version}")
        if n:
            log.info("retrain finished: version %s is the new champion", version)

    champion = Champion(
        model_source or registry_source(name, store),
        cfg.reload_interval_seconds,
        device=device,
        on_change=champion_changed,
    )

    evidence_by_path: dict[str | None, Any] = {}

    def mbr_evidence_for(path: str | None):
        """The MBR evidence `serve.mbr_*` asks for, built once per champion (its neighbours come
        from the champion's own train split), as the evaluate step built it; None for none."""
        if path not in evidence_by_path:
            rows = mbr_evidence.train_rows_of_model(path, store) if path and cfg.mbr_neighbors else []
            if cfg.mbr_neighbors and not rows:
                log.warning("serve.mbr_neighbors: %s has no train split in the store: no neighbours", path)
            evidence_by_path.clear()  # one champion at a time
            evidence_by_path[path] = mbr_evidence.from_config(cfg, rows)
        return evidence_by_path[path]

    def safe_emit(event: str, payload: dict[str, Any]) -> bool:
        try:
            version = payload.get("model_version")
            labels = {"llmflow.model.version": str(version)} if version is not None else {}
            emit(event, {**resource, **labels}, payload)
            return True
        except Exception as e:  # the answer to the user must not depend on the event bus
            log.error("could not emit %s: %s", event, e)
            return False

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        stop = threading.Event()
        champion.refresh(force=True)
        handoff.refresh(force=True)

        def poll():
            if handoff.enabled:
                maybe_retrain()  # feedback kept while retrains were off may be due now
            while not stop.wait(max(cfg.reload_interval_seconds, 0.5)):
                champion.refresh()
                was = handoff.enabled
                if handoff.refresh() and not was:
                    maybe_retrain()

        poller = threading.Thread(target=poll, name="champion-poller", daemon=True)
        poller.start()
        yield
        stop.set()
        poller.join(timeout=5)
        v1.state.close()

    app = FastAPI(
        title="llmflow",
        summary="Serves the registry's champion model and collects feedback that retrains it.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes, render=body_limit_error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError):
        # FastAPI's own handler echoes each bad input, and a NaN or a lone surrogate cannot be
        # written back as JSON (a 500); the type, place and message say what to change.
        detail = [{k: e.get(k) for k in ("type", "loc", "msg")} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": jsonable_encoder(detail)})

    app.state.champion, app.state.feedback, app.state.settings, app.state.name = champion, fb, cfg, name
    app.state.handoff = handoff
    bearer = HTTPBearer(auto_error=False)

    def authorized(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if token is None:
            return
        if creds is None or not hmac.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing or wrong bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def feedback_rate(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        """429 when this client's feedback is over its rate. A client is its remote address (the
        forwarded one behind a trusted proxy) together with the bearer token it presented."""
        if limiter is None:
            return
        client = request.client.host if request.client else "unknown"
        if creds is not None:
            client = hashlib.sha256(creds.credentials.encode()).hexdigest()[:16] + "@" + client
        wait = limiter.take(client)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                f"too much feedback from this client: the limit is {limiter.per_minute:g} per minute "
                f"after a burst of {limiter.burst}; retry in {retry} s",
                headers={"Retry-After": str(retry)},
            )

    def too_long(field: str, text: str | None, limit: int) -> None:
        if text is not None and len(text) > limit:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE,
                f"{field} has {len(text)} characters; the limit is {limit}",
            )

    v1 = openai_app(champion=champion, feedback=fb, settings=cfg, name=name, authorized=authorized)
    app.mount("/v1", v1)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model_loaded": champion.model is not None,
            "model_version": champion.version,
            "retrain": {"enabled": handoff.enabled, "reason": handoff.reason},
        }

    @app.get("/model", dependencies=[Depends(authorized)])
    def model_info() -> dict[str, Any]:
        version, model, _ = champion.snapshot()
        return {
            "name": name,
            "version": version,
            "model_path": champion.path,
            "loaded_at": champion.loaded_at,
            "parameters": sum(p.numel() for p in model.parameters()),
            "device": str(next(model.parameters()).device),
            "last_error": champion.error,
            "limits": {"max_prompt_chars": cfg.max_prompt_chars, "max_new_tokens": cfg.max_new_tokens},
            "batching": v1.state.batching(),
        }

    @app.post("/generate", dependencies=[Depends(authorized)])
    def generate(req: GenerateRequest) -> GenerateResponse:
        too_long("prompt", req.prompt, cfg.max_prompt_chars)
        too_long("system", req.system, cfg.max_prompt_chars)
        max_new = req.max_new_tokens or min(cfg.default_new_tokens, cfg.max_new_tokens)
        if max_new > cfg.max_new_tokens:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"max_new_tokens {max_new} is over the limit of {cfg.max_new_tokens}",
            )
        version, model, tokenizer = champion.snapshot()
        from model.chat import format_prompt
        from model.generate import generate as sample

        params = {
            "max_new_tokens": max_new,
            "temperature": req.temperature,
            "top_k": req.top_k,
            "top_p": req.top_p,
            "seed": req.seed,
        }
        mbr = cfg.mbr_samples if req.mbr_samples is None else req.mbr_samples
        if mbr and req.temperature == 0:
            params["mbr_samples"] = mbr
        copy_bias = cfg.copy_bias if req.copy_bias is None else req.copy_bias
        if copy_bias:
            params["copy_bias"] = copy_bias
        evidence = mbr_evidence_for(champion.path) if "mbr_samples" in params else None
        with champion.generate_lock:
            text = sample(
                model,
                tokenizer,
                [format_prompt(req.prompt, req.system, tokenizer)],
                **params,
                **({"mbr_evidence": evidence([req.prompt])} if evidence is not None else {}),
            )[0]
        gid = fb.record_generation(version, req.prompt, text, {**params, "system": req.system})
        return GenerateResponse(id=gid, text=text, model_version=version)

    @app.post(
        "/feedback",
        status_code=status.HTTP_201_CREATED,
        dependencies=[Depends(authorized), Depends(feedback_rate)],
    )
    def post_feedback(req: FeedbackRequest) -> dict[str, Any]:
        for field in ("prompt", "response"):
            too_long(
                field,
                getattr(req, field),
                cfg.max_prompt_chars if field == "prompt" else cfg.max_feedback_chars,
            )
        too_long("correction", req.correction, cfg.max_feedback_chars)
        too_long("preferred", req.preferred, cfg.max_feedback_chars)
        if req.generation_id is not None:
            gen = fb.get_generation(req.generation_id)
            if gen is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown generation id {req.generation_id!r}")
            if req.model_version is not None and req.model_version != gen["model_version"]:
                raise HTTPException(
                    status.HTTP_409_CONFLICT,
                    f"generation {req.generation_id} came from model version {gen['model_version']}, "
                    f"not {req.model_version}",
                )
            version, prompt, response = gen["model_version"], gen["prompt"], gen["response"]
        else:
            version, prompt, response = req.model_version, req.prompt, req.response
            if version != champion.version and not fb.known_version(version):
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_CONTENT,
                    f"unknown model version {version!r}: this service has served "
                    f"{champion.version or 'no model'} and has no generations from that version",
                )
        fid = fb.add_feedback(
            model_version=version,
            prompt=prompt,
            response=response,
            rating=req.rating,
            scale=req.scale,
            correction=req.correction,
            preferred=req.preferred,
            generation_id=req.generation_id,
        )
        safe_emit(
            events.FEEDBACK_RECEIVED,
            {
                "feedback_id": fid,
                "model_version": version,
                "rating": req.rating,
                "scale": req.scale,
                "has_correction": req.correction is not None,
                "has_preferred": req.preferred is not None,
            },
        )
        return {"id": fid, "retrain": maybe_retrain()}

    def maybe_retrain() -> dict[str, Any] | None:
        if not handoff.enabled:
            return None  # no one would start it: the feedback stays unclaimed for a later retrain
        claim = fb.claim_retrain(policy, name)
        if claim is None:
            return None
        if not handoff.refresh(force=True):  # the server or its automation went away since
            fb.release_retrain(claim["id"], note=f"retrains off: {handoff.reason}")
            return None
        try:
            export = fb.export(store, claim["id"])
        except Exception as e:
            fb.release_retrain(claim["id"], note=f"export failed: {e}")
            log.error("feedback export failed: %s", e)
            return None
        payload = {
            "model_name": name,
            "model_version": champion.version,
            "retrain_id": claim["id"],
            "reason": claim["reason"],
            **{f"feedback_{k}": v for k, v in claim["stats"].items()},
            "export_uri": export["uri"],
            "export_key": export["key"],
            "sft_path": export["sft_path"],
            "preferences_path": export["preferences_path"],
            "sft_examples": export["sft_examples"],
            "preference_pairs": export["preference_pairs"],
            "feedback_store": fb.display_url,
        }
        if not safe_emit(events.FEEDBACK_THRESHOLD_REACHED, payload):
            fb.release_retrain(claim["id"], note="the event could not be emitted")
            return None
        log.info("feedback threshold reached (%s): retrain %s requested", claim["reason"], claim["id"])
        return {"id": claim["id"], "reason": claim["reason"], "export_uri": export["uri"]}

    @app.get("/feedback/stats", dependencies=[Depends(authorized)])
    def feedback_stats() -> dict[str, Any]:
        return {**fb.stats(name), "policy": dataclasses.asdict(policy), "retrain": handoff.as_dict()}

    return app


def run(
    config: PipelineConfig | ServeConfig | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    home: str | None = None,
    name: str | None = None,
    log_level: str = "info",
) -> None:
    """Serve until interrupted (`llmflow serve`). Raises BindError, before loading anything, for
    an address other than loopback without a token."""
    import uvicorn

    if isinstance(config, PipelineConfig):
        name = name or config.name
        config = config.serve
    cfg = config or ServeConfig()
    host = host or cfg.host
    check_bind(host, serve_token(cfg))
    logger = logging.getLogger("llmflow")
    if not logger.handlers:  # the service's own lines (champion, retrains) beside uvicorn's
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:  %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(log_level.upper())
        logger.propagate = False
    app = create_app(cfg, name=name, home=home)
    uvicorn.run(app, host=host, port=port or cfg.port, log_level=log_level)
