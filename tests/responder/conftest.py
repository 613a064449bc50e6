"""The responder's tools query the same real Prometheus, with the same planted history, as the
detector's tests: its fixture, shared."""

from tests.detector.conftest import prometheus

__all__ = ["prometheus"]
