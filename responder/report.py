"""The root-cause report as the investigator records it: ranked, its gaps told, its evidence real.

`RootCauseReport` and its parts are event payloads (`eventlog.payloads.investigation`), since
`RootCauseConcluded` carries one; this module finishes a report before it is recorded.
"""

from __future__ import annotations

from eventlog.payloads import ToolFailed
from eventlog.payloads.investigation import Hypothesis, RootCauseReport, RuledOut
from responder.progress import Attempt, Investigation
from responder.worker import shorter

__all__ = ["Hypothesis", "RootCauseReport", "RuledOut", "finish", "partial_report"]

# Of each failed call's error in the gaps: the report of 40 failed calls stays far below the
# 1 MB a RootCauseConcluded may take (an error recorded before workers capped theirs included).
GAP_ERROR_CHARS = 500


def finish(report: RootCauseReport, attempt: Attempt, *, partial: bool) -> RootCauseReport:
    """Hypotheses ranked by confidence (a stable sort keeps the model's order among equals),
    evidence kept to recorded tool calls, and every call that failed, timed out or got no
    answer named in `gaps`."""
    made = set(attempt.requested) | set(attempt.outcomes)
    hypotheses = sorted(
        (
            h.model_copy(update={"evidence": [e for e in h.evidence if e in made]})
            for h in report.hypotheses
        ),
        key=lambda h: -h.confidence,
    )
    ruled_out = [
        r.model_copy(update={"evidence": [e for e in r.evidence if e in made]})
        for r in report.ruled_out
    ]
    gaps = list(report.gaps)
    for call_id, asked in attempt.requested.items():
        if any(call_id in gap for gap in gaps):
            continue  # the model told it already
        outcome = attempt.outcomes.get(call_id)
        if isinstance(outcome, ToolFailed):
            why = "timed out" if outcome.timed_out else "failed"
            error = shorter(outcome.error, GAP_ERROR_CHARS)
            gaps.append(f"{asked.tool_name} ({call_id}) {why}: {error}")
        elif outcome is None:
            gaps.append(f"{asked.tool_name} ({call_id}) had no result when the attempt ended")
    return report.model_copy(
        update={
            "hypotheses": hypotheses,
            "ruled_out": ruled_out,
            "gaps": gaps,
            "partial": partial or report.partial,
        }
    )


def partial_report(inv: Investigation, attempt: Attempt) -> RootCauseReport:
    """What is known when a limit ends an attempt: the built-in analyst's ranking of the
    results recorded so far (whatever model ran), so a partial report still says something."""
    from responder.analyst import rank_recorded

    return rank_recorded(inv, attempt)
