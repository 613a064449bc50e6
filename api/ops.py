"""POST /api/v1/sql, /healthz, /readyz and the read model's figures on /metrics."""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import CollectorRegistry


def add_routes(app: FastAPI, registry: CollectorRegistry) -> None:
    """Adds this module's routes to `app` (its `state.context` is an ApiContext)."""
