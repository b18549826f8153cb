"""The automations shipped in ``automations/*.yaml``, applied to a Prefect server.

Each file holds ``automations: [...]`` in Prefect's ``AutomationCore`` shape. Their
``send-notification`` actions name no block: :func:`apply_automations` fills in the id of the
notification block you saved (Slack webhook, email, Microsoft Teams, custom webhook, ...), then
creates each automation or updates the one with the same name, so applying twice changes nothing.

Example:
    >>> from prefect.blocks.notifications import SlackWebhook
    >>> SlackWebhook(url="https://hooks.slack.com/...").save("boundary-inference-alerts")
    ... # doctest: +SKIP
    >>> apply_automations("boundary-inference-alerts")  # doctest: +SKIP
    [AppliedAutomation(name='boundary-inference: daily spend alert', id=..., action='created'), ...]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml

from boundary_inference.errors import OperatorError

AUTOMATIONS_DIR = Path(__file__).resolve().parent.parent / "automations"
DEFAULT_BLOCK_NAME = "boundary-inference-alerts"
NOTIFY_ACTIONS = frozenset({"send-notification"})


@dataclass(frozen=True)
class AppliedAutomation:
    name: str
    id: UUID
    action: str  # "created", "updated" or "unchanged"


class NotificationBlockNotFound(OperatorError, LookupError):
    """No notification block of that name is saved on the Prefect server."""


def load_definitions(directory: Path | None = None) -> list[dict[str, Any]]:
    """Every automation definition under ``directory`` (``*.yaml``, ``*.yml``, ``*.json``)."""
    directory = Path(directory or AUTOMATIONS_DIR)
    definitions: list[dict[str, Any]] = []
    files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
    for path in files:
        data = yaml.safe_load(path.read_text())  # JSON is YAML
        if isinstance(data, dict) and "automations" in data:
            items = data["automations"]
        elif isinstance(data, list):
            items = data
        else:
            items = [data]
        definitions.extend(dict(item) for item in items if item)
    names = [d["name"] for d in definitions]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"automation names must be unique: {duplicates}")
    return definitions


def build_automations(definitions: list[dict[str, Any]], block_document_id: UUID) -> list[Any]:
    """Validated ``AutomationCore`` objects with every notification aimed at the block."""
    from prefect.events.schemas.automations import AutomationCore

    built = []
    for definition in definitions:
        data = dict(definition)
        for key in ("actions", "actions_on_trigger", "actions_on_resolve"):
            data[key] = [
                {**action, "block_document_id": str(block_document_id)}
                if action.get("type") in NOTIFY_ACTIONS
                else action
                for action in data.get(key) or []
            ]
        built.append(AutomationCore.model_validate(data))
    return built


def resolve_notification_block(client: Any, block_name: str) -> UUID:
    """``slug/name`` (e.g. ``slack-webhook/alerts``) or a bare name, unique among notification
    blocks."""
    if "/" in block_name:
        slug, name = block_name.split("/", 1)
        try:
            document = client.read_block_document_by_name(name, slug, include_secrets=False)
        except Exception as error:  # ObjectNotFound, or a bad slug
            raise NotificationBlockNotFound(f"no {slug!r} block named {name!r}") from error
        return UUID(str(document.id))
    matches = [
        document
        for document in client.read_block_documents(include_secrets=False)
        if document.name == block_name
        and document.block_schema is not None
        and "notify" in document.block_schema.capabilities
    ]
    if not matches:
        raise NotificationBlockNotFound(
            f"no notification block named {block_name!r}: save one first, e.g."
            f" SlackWebhook(url=...).save({block_name!r}), or create it in the UI (Blocks)"
        )
    if len(matches) > 1:
        types = sorted(str(m.block_type.slug) if m.block_type else "?" for m in matches)
        raise NotificationBlockNotFound(
            f"several notification blocks are named {block_name!r} ({', '.join(types)}):"
            " name it as <block-type-slug>/<name>"
        )
    return UUID(str(matches[0].id))


def apply_automations(
    block_name: str = DEFAULT_BLOCK_NAME, directory: Path | None = None
) -> list[AppliedAutomation]:
    """Create or update the shipped automations on the current Prefect API (``PREFECT_API_URL``)."""
    from prefect.client.orchestration import get_client

    definitions = load_definitions(directory)
    applied: list[AppliedAutomation] = []
    with get_client(sync_client=True) as client:
        block_id = resolve_notification_block(client, block_name)
        for automation in build_automations(definitions, block_id):
            existing = client.read_automations_by_name(automation.name)
            if existing and _comparable(existing[0]) == _comparable(automation):
                applied.append(AppliedAutomation(automation.name, existing[0].id, "unchanged"))
            elif existing:
                client.update_automation(existing[0].id, automation)
                applied.append(AppliedAutomation(automation.name, existing[0].id, "updated"))
            else:
                new_id = client.create_automation(automation)
                applied.append(AppliedAutomation(automation.name, new_id, "created"))
    return applied


def _comparable(automation: Any) -> Any:
    """An automation's definition as the server holds it, without what the server or the client
    generates (the automation's id and timestamps, each trigger's random id): equal means an
    update would change nothing (and emit no ``prefect.automation.updated`` event)."""
    from prefect.events.schemas.automations import AutomationCore

    data = automation.model_dump(mode="json", include=set(AutomationCore.model_fields))

    def strip_ids(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip_ids(v) for k, v in value.items() if k != "id"}
        if isinstance(value, list):
            return [strip_ids(v) for v in value]
        return value

    return strip_ids(data)
