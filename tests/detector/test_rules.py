"""The rules file: the sample in deploy/ loads, and a mistake is named in one line."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from detector.rules import RulesError, load_rules, parse_duration, parse_rules

SAMPLE = Path(__file__).parents[2] / "deploy" / "rules.yaml"


def test_the_sample_has_one_rule_per_detector_kind() -> None:
    rules = load_rules(SAMPLE).rules
    assert sorted(r.detector.kind for r in rules) == [
        "ewma", "forecast", "robust_zscore", "threshold", "zscore",
    ]  # fmt: skip
    assert all(r.labels.get("service") and r.labels.get("severity") for r in rules)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("2d", 172800), ("1500ms", 1.5), (90, 90)],
)
def test_durations_as_prometheus_writes_them(text: str | int, expected: float) -> None:
    assert parse_duration(text) == timedelta(seconds=expected)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return path


RULE = "rules:\n  - name: cpu\n    query: up\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (RULE + "    detector: {kind: threshold, treshold: 1}",
         "rule 'cpu' (rules[0]): detector.threshold: Field required; rule 'cpu' (rules[0]): "
         "detector.treshold: Extra inputs are not permitted"),
        (RULE + "    detector: {kind: magic}",
         "rule 'cpu' (rules[0]): detector: Input tag 'magic'"),
        (RULE + "    interval: soon\n    detector: {kind: threshold, threshold: 1}",
         "rule 'cpu' (rules[0]): interval: 'soon' is not a duration such as 30s, 5m or 1h"),
        (RULE + "    detector: {kind: zscore, window: 5m}",
         "rule 'cpu' (rules[0]): detector.window 5m holds 5 samples at step 1m; "
         "detector.min_samples is 10"),
        (RULE + "    detector: {kind: ewma, window: 1h, alpha: 2}",
         "rule 'cpu' (rules[0]): detector.alpha: Input should be less than or equal to 1"),
        (RULE + "    detector: {kind: threshold, threshold: 1}\n" + RULE[7:]
         + "    detector: {kind: threshold, threshold: 2}",
         "two rules are named 'cpu'"),
        ("rules: [\n", "not valid YAML at line 2"),
        ("- name: cpu\n", "expected a mapping with a 'rules:' list"),
    ],
)  # fmt: skip
def test_a_mistake_is_one_line_naming_rule_and_field(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(RulesError) as caught:
        load_rules(write(tmp_path, text))
    assert str(caught.value).startswith(f"rules file {tmp_path / 'rules.yaml'}: {message}")
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read it"):
        load_rules(tmp_path / "nope.yaml")


def test_the_history_is_whole_steps_ending_at_the_poll() -> None:
    rules = load_rules(SAMPLE).rules
    by_name = {r.name: r for r in rules}
    assert by_name["checkout-error-ratio"].span == timedelta(0)
    assert by_name["node-filesystem-filling-up"].span == timedelta(hours=6)
    odd = parse_rules({"rules": [{"name": "r", "query": "up", "interval": "7m",
                                  "detector": {"kind": "zscore", "window": "2h"}}]})  # fmt: skip
    assert odd.rules[0].span == timedelta(minutes=7 * 17)
