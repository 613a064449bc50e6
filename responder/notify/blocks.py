"""Block Kit messages of an incident's thread, and the generic webhook's JSON body.

Slack's mrkdwn reads `&`, `<` and `>` as markup: every text that comes from an event is
escaped (`escape`), so an alert's annotation cannot forge a link or a mention.
"""

from __future__ import annotations

from typing import Any

import orjson

from responder.notify.milestones import IncidentStory, Milestone

APPROVE = "vigil_approve"
REJECT = "vigil_reject"
METADATA_EVENT_TYPE = "vigil_milestone"
HEADER_MAX = 150  # Slack's limit on a header block's text
SECTION_MAX = 3000  # and on a section's
ICONS = {
    "opened": ":rotating_light:", "reopened": ":rotating_light:", "report": ":mag:",
    "approval_needed": ":raised_hand:", "approved": ":white_check_mark:", "rejected": ":no_entry:",
    "saga_started": ":gear:", "step_succeeded": ":heavy_check_mark:", "step_failed": ":x:",
    "compensation_started": ":leftwards_arrow_with_hook:",
    "compensation_succeeded": ":leftwards_arrow_with_hook:", "compensation_failed": ":x:",
    "compensation_escalated": ":sos:", "saga_compensated": ":rewind:",
    "saga_completed": ":tada:", "resolved": ":large_green_circle:",
}  # fmt: skip

Blocks = list[dict[str, Any]]


def escape(text: str) -> str:
    """Text from an event made literal for Slack's mrkdwn."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def incident_link(base_url: str, incident_id: str) -> str:
    """The timeline page of one incident."""
    return f"{base_url.rstrip('/')}/?incident={incident_id}"


def metadata(milestone: Milestone) -> dict[str, Any]:
    """Message metadata that names the milestone's event: found again in the channel's
    history, it tells a message posted before a crash from one never posted."""
    return {
        "event_type": METADATA_EVENT_TYPE,
        "event_payload": {
            "milestone_event_id": str(milestone.event.id),
            "incident_id": milestone.event.incident_id,
            "milestone": milestone.kind,
        },
    }


def opening_blocks(story: IncidentStory, base_url: str) -> tuple[str, Blocks]:
    """The incident's first message (fallback text, blocks): the alert, service, severity,
    status, the top hypotheses once a report is in, and a link to the timeline."""
    alert = story.alert
    status = "resolved" if story.resolved else "open"
    fields = [
        f"*Service*\n{escape(story.service or 'unknown')}",
        f"*Severity*\n{escape(story.severity or 'unknown')}",
        f"*Incident*\n`{story.incident_id}`",
        f"*Status*\n{status}",
    ]
    blocks: Blocks = [
        {"type": "header",
         "text": {"type": "plain_text", "text": _cut(f"🚨 {story.title}", HEADER_MAX)}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
    ]  # fmt: skip
    notes = alert.annotations if alert else {}
    about = notes.get("summary") or notes.get("description")
    if about:
        blocks.append(_section(escape(about)))
    hypotheses = story.top_hypotheses
    if hypotheses:
        lines = [
            f"{i}. *{h.category}*" + (f" of {escape(h.service)}" if h.service else "")
            + f" — {h.confidence:.0%}: {escape(h.explanation)}"
            for i, h in enumerate(hypotheses, 1)
        ]  # fmt: skip
        blocks.append(_section("*Top hypotheses*\n" + "\n".join(lines)))
    else:
        blocks.append(_context("Investigating: the hypotheses come with the report."))
    blocks.append(_context(f"<{incident_link(base_url, story.incident_id)}|Open the timeline>"))
    where = story.service or "unknown"
    # The fallback text is Slack's push notification: mrkdwn there too, so escaped as well.
    text = escape(f"[{story.severity or 'unknown'}] {story.title} on {where} ({status})")
    return text, blocks


def reply_blocks(milestone: Milestone, base_url: str) -> tuple[str, Blocks]:
    """A later milestone, as a reply in the incident's thread; 'approval needed' with its
    approve and reject buttons (value `<incident_id>:<saga_id>`)."""
    icon = ICONS[milestone.kind]
    text = f"{icon} {escape(milestone.summary)}"
    blocks: Blocks = [_section(text)]
    if milestone.kind == "approval_needed" and milestone.saga_id is not None:
        blocks.append(decision_buttons(milestone.event.incident_id, milestone.saga_id))
    link = incident_link(base_url, milestone.event.incident_id)
    blocks.append(_context(f"{milestone.kind.replace('_', ' ')} · <{link}|timeline>"))
    return text, blocks


def decision_buttons(incident_id: str, saga_id: str) -> dict[str, Any]:
    value = f"{incident_id}:{saga_id}"
    confirm = {
        "title": {"type": "plain_text", "text": "Run this remediation?"},
        "text": {"type": "mrkdwn", "text": f"Vigil will run `{saga_id}` now."},
        "confirm": {"type": "plain_text", "text": "Approve"},
        "deny": {"type": "plain_text", "text": "Cancel"},
    }
    return {
        "type": "actions",
        "block_id": f"decide-{saga_id}",
        "elements": [
            {"type": "button", "action_id": APPROVE, "style": "primary", "value": value,
             "text": {"type": "plain_text", "text": "Approve"}, "confirm": confirm},
            {"type": "button", "action_id": REJECT, "style": "danger", "value": value,
             "text": {"type": "plain_text", "text": "Reject"}},
        ],
    }  # fmt: skip


def decided_blocks(blocks: Blocks, note: str) -> Blocks:
    """A message's blocks with its buttons replaced by `note` (mrkdwn): once decided."""
    kept = [b for b in blocks if b.get("type") != "actions"]
    return [*kept, _context(note)]


def webhook_body(milestone: Milestone, story: IncidentStory, base_url: str) -> dict[str, Any]:
    """The generic webhook's JSON (docs/notifications.md): `milestone`, `incident_id`,
    `service`, `severity`, `title`, `summary`, `link` and the milestone's `event` envelope."""
    return {
        "milestone": milestone.kind,
        "incident_id": milestone.event.incident_id,
        "service": story.service,
        "severity": story.severity,
        "title": story.title,
        "summary": milestone.summary,
        "link": incident_link(base_url, milestone.event.incident_id),
        "event": orjson.loads(milestone.event.to_json()),
    }


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _cut(text, SECTION_MAX)}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
