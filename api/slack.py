"""POST /slack/interactions: approve and reject from Slack's buttons, signature verified.

Slack signs each request with the app's signing secret (`X-Slack-Signature`, over
`v0:<X-Slack-Request-Timestamp>:<body>`); a request not signed so, or signed more than five
minutes ago (a replay), is refused with 401 and the reason. A click on `vigil_approve` or
`vigil_reject` (value `<incident_id>:<saga_id>`) records RemediationApproved or
RemediationRejected by `slack:<user name>`, like `vigil approve` does. Slack ignores the body
of the answer to a button click, so what the user sees is sent to the payload's
`response_url` once the answer is out: the message with its buttons replaced by who decided,
or, when nothing awaits approval any more, an ephemeral note to that user alone. The same
message is also the answer's body (for logs and tests).
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs

import httpx
import orjson
from fastapi import BackgroundTasks, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from nats.errors import Error as NatsError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from slack_sdk.signature import SignatureVerifier

from eventlog.envelope import INCIDENT_ID_PATTERN
from eventlog.publisher import PublishError
from responder.attempts import NoSuchIncident
from responder.notify.blocks import APPROVE, REJECT, decided_blocks
from responder.saga.proposals import NotAwaitingApproval, decide

if TYPE_CHECKING:  # api.app imports this module
    from api.app import ApiContext

log = logging.getLogger(__name__)
MAX_AGE = 5 * 60  # seconds a signed request stays good: Slack's own advice
MAX_BODY = 256 * 1024  # an interaction payload is a few kB
SAGA_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
INCIDENT_ID = re.compile(INCIDENT_ID_PATTERN.removeprefix("^").removesuffix("$"))


class SlackUser(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1)
    username: str | None = None
    name: str | None = None

    @property
    def who(self) -> str:
        """What is recorded as `by`: `slack:<username>` (the id if Slack sent no name)."""
        return f"slack:{self.username or self.name or self.id}"


class SlackAction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    action_id: str
    value: str | None = None


class BlockActions(BaseModel):
    """The parts of Slack's `block_actions` payload this route reads."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["block_actions"]
    user: SlackUser
    actions: list[SlackAction] = Field(min_length=1)
    response_url: str | None = None
    message: dict[str, Any] | None = None


def add_routes(app: FastAPI) -> None:
    """Adds this module's routes to `app` (its `state.context` is an ApiContext)."""

    # Slack's door, signed by Slack: not part of the bearer-token API's schema.
    @app.post("/slack/interactions", include_in_schema=False)
    async def slack_interactions(request: Request, background: BackgroundTasks) -> JSONResponse:
        context: ApiContext = request.app.state.context
        body = await _signed_body(request, context.slack_signing_secret)
        click = _parse(body)
        message = await _decide(context, click)
        if click.response_url:
            background.add_task(_respond, click.response_url, message)
        return JSONResponse(message)


async def _signed_body(request: Request, secret: str | None) -> bytes:
    """The body, if Slack signed it within five minutes; HTTPException saying why not."""
    if not secret:
        raise HTTPException(
            503, "Slack's buttons are not set up here: set VIGIL_SLACK_SIGNING_SECRET"
        )
    size = request.headers.get("content-length")
    if size is not None and size.isascii() and size.isdigit() and int(size) > MAX_BODY:
        raise HTTPException(413, f"an interaction payload is at most {MAX_BODY} bytes")
    body = await request.body()
    if len(body) > MAX_BODY:
        raise HTTPException(413, f"an interaction payload is at most {MAX_BODY} bytes")
    stamp = request.headers.get("x-slack-request-timestamp")
    signature = request.headers.get("x-slack-signature")
    if not stamp or not signature:
        raise HTTPException(
            401, "not signed by Slack: X-Slack-Signature and X-Slack-Request-Timestamp are needed"
        )
    if not (stamp.isascii() and stamp.isdigit()):  # '²'.isdigit(), yet int('²') fails
        raise HTTPException(401, f"X-Slack-Request-Timestamp {stamp[:32]!r} is not Unix seconds")
    age = time.time() - int(stamp)
    if abs(age) > MAX_AGE:
        raise HTTPException(
            401, f"the request was signed {age:.0f} s from now, beyond 5 minutes: a replay?"
        )
    if not SignatureVerifier(secret).is_valid(body, stamp, signature):
        raise HTTPException(
            401, "the Slack signature does not match: is VIGIL_SLACK_SIGNING_SECRET this app's?"
        )
    return body


def _parse(body: bytes) -> BlockActions:
    form = parse_qs(body.decode("utf-8", errors="replace"))
    if "payload" not in form:
        raise HTTPException(400, "no `payload` field: Slack sends the interaction as a form")
    try:
        return BlockActions.model_validate(orjson.loads(form["payload"][0]))
    except orjson.JSONDecodeError:
        raise HTTPException(400, "the `payload` field is not JSON") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        raise HTTPException(
            400, f"not a block_actions payload Vigil handles: {where}: {first['msg']}"
        ) from None


async def _decide(context: ApiContext, click: BlockActions) -> dict[str, Any]:
    action = next((a for a in click.actions if a.action_id in (APPROVE, REJECT)), None)
    if action is None:
        raise HTTPException(400, f"no {APPROVE} or {REJECT} action in the payload")
    incident_id, saga_id = _target(action.value)
    approve = action.action_id == APPROVE
    if click.user.id not in context.slack_approvers:
        # A button is seen by everyone in the channel (guests, a Slack Connect partner): only
        # the people named may act, as only an operate token may on the API.
        why = (
            "no Slack user may decide here: VIGIL_SLACK_APPROVERS is not set"
            if not context.slack_approvers
            else f"<@{click.user.id}> is not among VIGIL_SLACK_APPROVERS"
        )
        log.warning("incident %s: a Slack click by %s refused: %s", incident_id, click.user.id, why)
        return {"response_type": "ephemeral", "replace_original": False,
                "text": f":no_entry: {why}; nothing was recorded"}  # fmt: skip
    try:
        decided = await decide(
            context.nc.jetstream(), incident_id, approve=approve, by=click.user.who,
            reason="from Slack", saga_id=saga_id, expiry=context.approval_expiry,
        )  # fmt: skip
    except (NoSuchIncident, NotAwaitingApproval) as exc:
        return {"response_type": "ephemeral", "replace_original": False,
                "text": f":warning: {exc}"}  # fmt: skip
    except (NatsError, PublishError, TimeoutError) as exc:
        log.warning("incident %s: a Slack click not recorded: %r", incident_id, exc)
        raise HTTPException(503, "the event log did not answer; click again") from None
    verb = "approved" if approve else "rejected"
    icon = ":white_check_mark:" if approve else ":no_entry:"
    note = (
        f"{icon} {decided.saga_id} {verb} by <@{click.user.id}> "
        f"(recorded as {type(decided).__name__})"
    )
    blocks = (click.message or {}).get("blocks") or []
    return {"replace_original": True, "text": note, "blocks": decided_blocks(blocks, note)}


def _target(value: str | None) -> tuple[str, str]:
    incident, _, saga = (value or "").partition(":")
    if not INCIDENT_ID.fullmatch(incident) or not SAGA_ID.fullmatch(saga):
        raise HTTPException(400, f"the button's value {value!r} is not <incident_id>:<saga_id>")
    return incident, saga


async def _respond(url: str, message: dict[str, Any]) -> None:
    """What the user sees, to the click's response_url (after the 200 Slack awaits)."""
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            answer = await client.post(url, json=message)
        if answer.status_code >= 300:
            log.warning("Slack's response_url answered %s: %s", answer.status_code,
                        answer.text[:200])  # fmt: skip
    except httpx.HTTPError as exc:
        log.warning("could not reach Slack's response_url: %r", exc)
