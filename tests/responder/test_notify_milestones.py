"""Which events are milestones, and what the incident's messages say: pure, no broker."""

from __future__ import annotations

import orjson

from eventlog.envelope import Event, new_event
from eventlog.payloads import (
    CompensationEscalated,
    IncidentResolved,
    NotificationSent,
    RemediationProposed,
    SagaStepFailed,
    ToolRequested,
)
from responder.notify.blocks import opening_blocks, reply_blocks
from responder.notify.milestones import IncidentStory, milestone_of, notification_id
from tests.responder.notify_support import (
    BASE_URL,
    STEP,
    WHOLE_STORY_MILESTONES,
    alert,
    event,
    whole_story,
)


def kinds(events: list[Event]) -> list[str | None]:
    story = IncidentStory("inc-a", tuple(events))
    return [m.kind if (m := milestone_of(e, story)) else None for e in events]


def test_the_whole_story_has_its_milestones_and_no_others() -> None:
    found = [k for k in kinds(whole_story("inc-a")) if k is not None]
    assert found == WHOLE_STORY_MILESTONES  # the second alert and a step's start are none


def test_an_alert_after_the_resolution_reopens_and_a_returned_one_is_no_news() -> None:
    first = alert("inc-a")
    resolved = event(IncidentResolved(how="alert_resolved"), "inc-a")
    again = alert("inc-a", fingerprint="fp-9")
    returned = event(first.data.model_copy(update={"returned": True}), "inc-a")
    assert kinds([first, resolved, again, returned]) == ["opened", "resolved", "reopened", None]


def test_only_a_plan_that_waits_for_a_human_asks_for_approval() -> None:
    auto = event(RemediationProposed(saga_id="s-1", steps=[STEP], mode="auto"), "inc-a")
    dry = event(RemediationProposed(saga_id="s-2", steps=[STEP], mode="dry_run"), "inc-a")
    tool = event(ToolRequested(tool_call_id="c", tool_name="t"), "inc-a")
    assert kinds([alert("inc-a"), auto, dry, tool]) == ["opened", None, None, None]


def test_failures_and_escalations_say_what_a_human_must_do() -> None:
    failed = event(SagaStepFailed(saga_id="s", step=0, action="rollback_deploy", error="quota",
                                  uncertain=True), "inc-a")  # fmt: skip
    escalated = event(CompensationEscalated(saga_id="s", step=1, action="scale_down",
                                            attempts=3, error="403"), "inc-a")  # fmt: skip
    story = IncidentStory("inc-a", (alert("inc-a"), failed, escalated))
    assert milestone_of(failed, story).summary == (  # type: ignore[union-attr]
        "Step 1 (rollback_deploy) failed (its effect is uncertain): quota"
    )
    assert "A human must undo step 2 (scale_down)" in milestone_of(escalated, story).summary  # type: ignore[union-attr]


def test_the_thread_is_the_recorded_opening_message() -> None:
    opening = alert("inc-a")
    sent = new_event(
        NotificationSent(channel="slack", target="C1", milestone="opened", thread_ts="1.2",
                         message_ts="1.2"),
        incident_id="inc-a", source="notifier", caused_by=opening,
        event_id=notification_id(opening.id, "slack"),
    )  # fmt: skip
    assert IncidentStory("inc-a", (opening,)).thread_ts() is None
    story = IncidentStory("inc-a", (opening, sent))
    assert (story.thread_ts(), story.slack_channel()) == ("1.2", "C1")
    assert story.sent(opening.id, "slack") is not None and story.sent(opening.id, "webhook") is None
    assert notification_id(opening.id, "slack") != notification_id(opening.id, "webhook")


def test_text_from_events_cannot_mention_or_link_in_slack() -> None:
    story_events = whole_story("inc-a")
    story = IncidentStory("inc-a", tuple(story_events))
    text, blocks = opening_blocks(story, BASE_URL)
    shown = orjson.dumps(blocks).decode()
    assert "<!channel>" not in shown and "&lt;!channel&gt;" in shown
    assert "<" not in text  # the fallback text (the push notification) is mrkdwn too
    assert f"<{BASE_URL}/?incident=inc-a|Open the timeline>" in shown  # our own link stays one
    assert "82%" in shown  # the report is among the events: its hypotheses show
    approval = milestone_of(story_events[3], story)
    assert approval is not None
    _, reply = reply_blocks(approval, BASE_URL)
    assert [b["type"] for b in reply] == ["section", "actions", "context"]
