"""The automation *notify <name> gate failed*: `llmflow.gate.failed` -> a notification.

The gate step emits the event on `llmflow.model.<name>` with the version and the reasons. Where
it goes is `serve.gate_failed_notify` (LLMFLOW_GATE_FAILED_NOTIFY wins): an http(s) URL gets a
JSON POST `{"text", "subject", "body"}` through a `CustomWebhookNotificationBlock` saved as
`llmflow-gate-failed-<name>` (`text` is what Slack and Mattermost show); `<block-type>/<name>`
names a notification block made in the UI (say `slack-webhook/ops`, its secret URL kept out of
presets); unset, the action is Prefect's DoNothing: Prefect has no log action, and each firing
is still recorded as `prefect.automation.action.executed` (Events in the UI). Created or updated
by name, so each `llmflow server` or `llmflow deploy` leaves exactly one.
"""

from __future__ import annotations

import os
from typing import Any
from uuid import UUID

from llmflow import events
from llmflow.config import PipelineConfig

NOTIFY_ENV = "LLMFLOW_GATE_FAILED_NOTIFY"

# Jinja, rendered by the Prefect server with the triggering `event` (prefect/server/events/actions.py).
SUBJECT = "llmflow: the gate failed for {{ event.resource.id }}"
BODY = (
    "Candidate version {{ event.payload.version }} of {{ event.resource.id }} did not pass the gate: "
    "{{ event.payload.reasons | join('; ') }}. Event {{ event.id }} at {{ event.occurred }}."
)
# The webhook's JSON; `{{key}}` here is the block's own substitution of subject and body.
WEBHOOK_JSON = {"text": "{{subject}}\n{{body}}", "subject": "{{subject}}", "body": "{{body}}"}


def automation_name(config: PipelineConfig) -> str:
    return f"notify {config.name} gate failed"


def notify_target(config: PipelineConfig) -> str | None:
    """Where to notify: the environment wins over the config, as for the serve token."""
    return os.environ.get(NOTIFY_ENV) or config.serve.gate_failed_notify


def gate_failed_automation(config: PipelineConfig, block_document_id: UUID | None) -> Any:
    """The automation (a Prefect `AutomationCore`): notify through the block, or do nothing."""
    from prefect.events.actions import DoNothing, SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    action = (
        SendNotification(block_document_id=block_document_id, subject=SUBJECT, body=BODY)
        if block_document_id
        else DoNothing()
    )
    return AutomationCore(
        name=automation_name(config),
        description=f"Tell people when a candidate of '{config.name}' fails the gate "
        f"({events.GATE_FAILED}). Managed by llmflow: edit {NOTIFY_ENV} or serve.gate_failed_notify.",
        trigger=EventTrigger(
            expect={events.GATE_FAILED},
            match={"prefect.resource.id": events.resource_id("model", config.name)},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[action],
    )


def notification_block(config: PipelineConfig, target: str, client: Any) -> UUID:
    """The block document id for `target`: a webhook block saved for a URL, or a named block."""
    if target.startswith(("http://", "https://")):
        from prefect.blocks.notifications import CustomWebhookNotificationBlock

        block = CustomWebhookNotificationBlock(
            name=f"llmflow {config.name}", url=target, json_data=WEBHOOK_JSON
        )
        return block.save(f"llmflow-gate-failed-{_slug(config.name)}", overwrite=True)
    slug, sep, name = target.partition("/")
    if not (sep and slug and name):
        raise ValueError(
            f"{NOTIFY_ENV} / serve.gate_failed_notify is {target!r}: give an http(s) URL or a "
            "notification block as '<block-type>/<block-name>', e.g. 'slack-webhook/ops'"
        )
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_block_document_by_name(name=name, block_type_slug=slug).id
    except ObjectNotFound:
        raise ValueError(
            f"no notification block '{target}' on the Prefect server: create it (UI: Blocks) or fix "
            f"{NOTIFY_ENV} / serve.gate_failed_notify"
        ) from None


def ensure_gate_failed_automation(config: PipelineConfig) -> UUID:
    """Create or update the automation by name on the server at PREFECT_API_URL; its id."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        target = notify_target(config)
        block_id = notification_block(config, target, client) if target else None
        automation = gate_failed_automation(config, block_id)
        existing = client.read_automations_by_name(automation.name)
        if not existing:
            return client.create_automation(automation)
        keep, *extra = existing
        client.update_automation(keep.id, automation)
        for duplicate in extra:  # two processes created it at once
            client.delete_automation(duplicate.id)
        return keep.id


def _slug(name: str) -> str:
    """Block names allow lowercase letters, digits and dashes."""
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "model"
