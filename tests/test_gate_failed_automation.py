"""The automation on `llmflow.gate.failed` (deployments/automations.py), on a real Prefect server.

One `prefect server start` for the module and a tiny webhook receiver on 127.0.0.1. Each test
sets where to notify, lets `ensure_gate_failed_automation` create or update the automation,
posts a `llmflow.gate.failed` event to the server's API as the gate step would, and waits
(bounded) for what the automation does: a POST to the receiver, or, with nothing configured,
Prefect's record that the do-nothing action ran.
"""

from __future__ import annotations

import time

import httpx
import pytest

from deployments.automations import (
    NOTIFY_ENV,
    automation_name,
    ensure_gate_failed_automation,
    notification_block,
)
from llmflow import events
from llmflow.config import load_config
from tests.livestack import drain_prefect_workers, free_port, missing_prerequisite, wait_for, webhook
from tests.prereq import skip_missing

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api_url(tmp_path_factory):
    reason = missing_prerequisite()
    if reason:
        skip_missing("the llmflow and prefect commands", reason)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.localserver import LocalServer

    work = tmp_path_factory.mktemp("automation")
    srv = LocalServer(port=free_port(), env={"PREFECT_HOME": str(work)}, log_path=work / "server.log")
    srv.start()
    try:
        with temporary_settings(updates={PREFECT_API_URL: srv.api_url}):
            yield srv.api_url
            drain_prefect_workers()  # nothing of this process may stay bound to this server
    finally:
        srv.stop()


@pytest.fixture
def receiver():
    """A webhook on 127.0.0.1: the JSON bodies POSTed to it, in order."""
    with webhook() as hook:
        yield hook


def _config(target: str | None = None):
    return load_config("smoke", [f"serve.gate_failed_notify={target}"] if target else [])


def _gate_failed(api_url: str, name: str, version: str) -> None:
    """What the gate step emits for a failed candidate (tasks/gate.py), posted to the API."""
    from prefect.events import Event

    event = Event(
        event=events.GATE_FAILED,
        resource={"prefect.resource.id": events.resource_id("model", name)},
        payload={"version": version, "key": "abc123", "reasons": ["rougeL 0.10 < 0.20", "bleu 1.0 < 2.0"]},
    )
    httpx.post(f"{api_url}/events", json=[event.model_dump(mode="json")], timeout=10).raise_for_status()


def _until_notified(api_url: str, received: list[dict], version: str, timeout: float = 60) -> dict:
    """Post the event until the receiver has its notification (a new automation may take a moment
    to reach the server's trigger service); the first matching body."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _gate_failed(api_url, "smoke", version)
        for _ in range(50):
            hits = [b for b in received if f"version {version} " in b.get("body", "")]
            if hits:
                return hits[0]
            time.sleep(0.2)
    raise AssertionError(f"no notification for version {version} within {timeout:.0f}s; got {received}")


def _automations(name: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_automations_by_name(name)


def test_a_target_that_is_neither_url_nor_block_says_what_to_write():
    with pytest.raises(ValueError, match="'<block-type>/<block-name>'"):
        notification_block(_config(), "ops", client=None)


def test_without_a_target_the_automation_fires_and_does_nothing(api_url, monkeypatch):
    monkeypatch.delenv(NOTIFY_ENV, raising=False)
    cfg = _config()
    automation_id = ensure_gate_failed_automation(cfg)
    [automation] = _automations(automation_name(cfg))
    assert automation.id == automation_id and automation.enabled
    assert automation.trigger.expect == {events.GATE_FAILED}
    assert [a.type for a in automation.actions] == ["do-nothing"]

    def executed():
        _gate_failed(api_url, "smoke", "1")
        page = httpx.post(
            f"{api_url}/events/filter",
            json={
                "filter": {
                    "event": {"name": ["prefect.automation.action.executed"]},
                    "resource": {"id": [f"prefect.automation.{automation_id}"]},
                }
            },
            timeout=10,
        ).json()
        return page["events"]

    wait_for(executed, 60, "Prefect to record that the automation ran", interval=3)


def test_with_a_webhook_a_failed_gate_is_posted_to_it(api_url, receiver, monkeypatch):
    monkeypatch.delenv(NOTIFY_ENV, raising=False)
    url, received = receiver
    cfg = _config(url)
    first = ensure_gate_failed_automation(cfg)
    assert ensure_gate_failed_automation(cfg) == first  # by name: updated, not duplicated
    [automation] = _automations(automation_name(cfg))
    assert [a.type for a in automation.actions] == ["send-notification"]

    body = _until_notified(api_url, received, "2")
    assert body["subject"] == "llmflow: the gate failed for llmflow.model.smoke"
    assert "rougeL 0.10 < 0.20; bleu 1.0 < 2.0" in body["body"]
    assert body["text"] == f"{body['subject']}\n{body['body']}"


def test_a_named_notification_block_from_the_environment(api_url, receiver, monkeypatch):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    url, received = receiver
    CustomWebhookNotificationBlock(name="ops", url=url, json_data={"body": "{{body}}"}).save(
        "ops-hook", overwrite=True
    )
    monkeypatch.setenv(NOTIFY_ENV, "custom-webhook/ops-hook")  # wins over the config's URL
    ensure_gate_failed_automation(_config("http://127.0.0.1:9/never"))
    body = _until_notified(api_url, received, "3")
    assert body == {"body": body["body"]} and "llmflow.model.smoke" in body["body"]

    monkeypatch.setenv(NOTIFY_ENV, "custom-webhook/no-such-block")
    with pytest.raises(ValueError, match="no notification block 'custom-webhook/no-such-block'"):
        ensure_gate_failed_automation(_config())
