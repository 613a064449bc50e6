"""The base of every event payload: a small, frozen, strictly-shaped fact."""

from pydantic import BaseModel, ConfigDict


class Payload(BaseModel):
    """A payload carries only the facts; ids and time live on the envelope."""

    model_config = ConfigDict(frozen=True, extra="forbid")
