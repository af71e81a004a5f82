"""Whether the service can hand a retrain to Prefect, and what it knows about that now.

A retrain is handed off by emitting `llmflow.feedback.threshold_reached`; it reaches a fine-tune
only through an enabled automation on a Prefect server that runs a deployment on that event for
this model (the `finetune` deployment's trigger, deployments/serve.py). Without one the event
reaches no one and a claimed retrain would block the next for `serve.retrain_timeout_seconds`,
so the service claims nothing while `Handoff` says off, and keeps the feedback for later.

`prefect_check(name)` asks the server at PREFECT_API_URL (a health probe, then its automations
and the deployment they run). It never asks Prefect's client without an API URL: that would
start a temporary server in this process, which no automation listens to.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from llmflow import events

log = logging.getLogger("llmflow.serve")

Check = Callable[[], "tuple[bool, str]"]


def prefect_api_url() -> str | None:
    """The configured Prefect API (PREFECT_API_URL or a Prefect profile), or None."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


def prefect_check(name: str, timeout: float = 5.0) -> Check:
    """A check that a Prefect server answers and runs a deployment on this model's feedback event."""
    resource = {"prefect.resource.id": events.resource_id("model", name), "prefect.resource.name": name}

    def check() -> tuple[bool, str]:
        import httpx

        api = prefect_api_url()
        if api is None:
            return False, "PREFECT_API_URL is not set: there is no Prefect server to start a retrain"
        try:  # a plain probe first: a server that is down fails fast, without the client's retries
            httpx.get(f"{api.rstrip('/')}/health", timeout=timeout).raise_for_status()
        except httpx.HTTPError as e:
            return False, f"the Prefect server at PREFECT_API_URL does not answer: {type(e).__name__}: {e}"
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        try:
            with get_client(httpx_settings={"timeout": timeout}, sync_client=True) as client:
                for automation in _automations(client):
                    deployment_id = runs_on_feedback(automation, resource)
                    if deployment_id is None:
                        continue
                    try:
                        deployment = client.read_deployment(deployment_id)
                    except ObjectNotFound:
                        continue
                    if getattr(deployment, "paused", False):
                        continue
                    flow = client.read_flow(deployment.flow_id).name
                    return True, (
                        f"automation '{automation.name}' runs deployment "
                        f"{flow}/{deployment.name} on {events.FEEDBACK_THRESHOLD_REACHED}"
                    )
        except Exception as e:  # the server answered its health probe but not this: say so, claim nothing
            return False, f"could not read the Prefect server's automations: {type(e).__name__}: {e}"
        return False, (
            f"no enabled automation runs a deployment on {events.FEEDBACK_THRESHOLD_REACHED} "
            f"for {resource['prefect.resource.id']}: register the deployments with this config's name "
            f"({name!r}) through `llmflow server` or `llmflow deploy`"
        )

    return check


def _automations(client: Any, page: int = 200):
    offset = 0
    while True:
        batch = client.read_automations(limit=page, offset=offset)
        yield from batch
        if len(batch) < page:
            return
        offset += page


def runs_on_feedback(automation: Any, resource: dict[str, str]) -> Any:
    """The deployment id an enabled automation runs on the feedback event of `resource`, or None."""
    from prefect.events.schemas.events import Resource, matches

    trigger = automation.trigger
    if not automation.enabled or getattr(trigger, "posture", None) != "Reactive":
        return None  # compound, proactive and metric triggers are not what deployments/serve.py makes
    expect = trigger.expect or {"*"}
    if not any(matches(e, events.FEEDBACK_THRESHOLD_REACHED) for e in expect):
        return None
    if not trigger.match.matches(Resource(resource)):
        return None
    for action in automation.actions:
        if getattr(action, "type", None) == "run-deployment" and action.source == "selected":
            return action.deployment_id
    return None


class Handoff:
    """What `check` last said, asked again at most every `interval` seconds (or when forced).

    Logs one line when the answer first comes and whenever it changes. Reasons name no address:
    /health, which shows them, needs no token.
    """

    def __init__(self, check: Check, interval: float):
        self.check, self.interval = check, interval
        self.enabled = False
        self.reason = "not checked yet"
        self.checked_at: float | None = None
        self._checked = float("-inf")
        self._lock = threading.Lock()

    def refresh(self, force: bool = False) -> bool:
        """Ask `check` if due (or forced); True when a retrain can be handed off."""
        if not force and time.monotonic() - self._checked < self.interval:
            return self.enabled
        with self._lock:
            try:
                enabled, reason = self.check()
            except Exception as e:  # a broken check must not take the service down: claim nothing
                enabled, reason = False, f"the retrain hand-off check failed: {type(e).__name__}: {e}"
            first, changed = self.checked_at is None, enabled != self.enabled
            self.enabled, self.reason = enabled, reason
            self.checked_at, self._checked = time.time(), time.monotonic()
        if first or changed:
            api = prefect_api_url()
            where = f" (Prefect API {api})" if api else ""
            if enabled:
                log.info("retrains on: %s%s", reason, where)
            else:
                log.warning(
                    "retrains off: %s%s; feedback is kept, unclaimed, for a later retrain", reason, where
                )
        return enabled

    def as_dict(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "reason": self.reason, "checked_at": self.checked_at}
