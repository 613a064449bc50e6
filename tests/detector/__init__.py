"""Tests of the metrics poller."""
