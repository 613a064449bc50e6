"""The metrics poller: PromQL rules judged by detectors, anomalies appended as events.

Entry points for the composition root: `load_rules(path)` and `run_detector(...)`.
"""

from detector.metrics import DetectorMetrics
from detector.poller import Detector, run_detector
from detector.prometheus import PrometheusSource
from detector.rules import RulesError, RuleSet, load_rules

__all__ = [
    "Detector",
    "DetectorMetrics",
    "PrometheusSource",
    "RuleSet",
    "RulesError",
    "load_rules",
    "run_detector",
]
