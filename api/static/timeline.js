// One incident's black-box timeline: each event as an item in stream order; a tool call's
// outcome and a saga's steps update the item of their request or proposal in place.
import { post } from "./api.js";
import { advance } from "./list.js";
import { h, clip, percent, duration, age, timeOf, chip, summarize, jsonBlock } from "./dom.js";
import { state } from "./state.js";

function promqlLink(expr) {
  const base = state.config && state.config.prometheus_url;
  const code = h("code", { class: "promql" }, expr);
  if (!base || !/^https?:\/\//.test(base)) return code;
  const href = `${base}/graph?g0.expr=${encodeURIComponent(expr)}&g0.tab=0`;
  return h("a", { href, target: "_blank", rel: "noopener noreferrer", class: "promql-link",
    title: "Open in Prometheus" }, code);
}

function argsList(args) {
  const entries = Object.entries(args || {});
  if (!entries.length) return null;
  return h("dl", { class: "args" }, entries.map(([k, v]) => [
    h("dt", {}, k),
    h("dd", {}, (k === "query" || k === "expr") && typeof v === "string"
      ? promqlLink(v) : h("code", {}, typeof v === "string" ? v : JSON.stringify(v))),
  ]));
}

/** What a model step said: its text, and the tools it asked for. */
function modelParts(response) {
  const parts = (response && response.parts) || [];
  const said = parts.filter((p) => p.part_kind === "text" && p.content).map((p) => p.content);
  const asked = parts.filter((p) => p.part_kind === "tool-call").map((p) => p.tool_name);
  return [
    said.length ? h("p", { class: "said" }, clip(said.join(" "), 600)) : null,
    asked.length ? h("p", { class: "asked" }, "Asked for: ", asked.join(", ")) : null,
  ];
}

const STEP_STATES = {
  SagaStepStarted: "running", SagaStepSucceeded: "completed", SagaStepFailed: "failed",
  CompensationStarted: "compensating", CompensationSucceeded: "compensated",
  CompensationFailed: "compensation failed", CompensationEscalated: "escalated",
};

export class Timeline {
  constructor(id, root) {
    this.id = id;
    this.lastSeq = 0;
    this.awaiting = new Set();
    this.sagas = new Map(); // saga_id -> {node, steps: [node], status, proposal}
    this.calls = new Map(); // tool_call_id -> node
    this.detailSeq = 0;
    this.row = { incident_id: id };
    this.title = h("h2", { id: "detail-title", tabindex: "-1" }, id);
    this.facts = h("p", { class: "facts" });
    this.banner = h("div", { class: "banners", role: "region", "aria-label": "Awaiting approval", "aria-live": "polite" });
    this.list = h("ol", { class: "timeline", "aria-label": "Timeline" });
    root.replaceChildren(this.title, this.facts, this.banner, this.list);
  }

  seed(detail) {
    if (detail.incident) Object.assign(this.row, detail.incident);
    this.detailSeq = detail.last_seq || 0;
    for (const id of detail.awaiting_approval || []) this.awaiting.add(id);
    this.renderHead();
  }

  renderHead() {
    const r = this.row;
    this.title.textContent = `${r.title || "Incident"}${r.service ? ` on ${r.service}` : ""}`;
    this.facts.replaceChildren(...[
      chip(r.status || "open"),
      r.severity ? chip(r.severity, `sev-${r.severity}`) : null,
      h("span", {}, "Incident ", h("code", {}, this.id)),
      r.opened_at ? h("span", {}, "opened ", h("time", { class: "age", datetime: r.opened_at, title: r.opened_at }, age(r.opened_at))) : null,
      r.acknowledged_by ? h("span", {}, `acknowledged by ${r.acknowledged_by}`) : null,
      r.resolution ? h("span", {}, `resolved (${r.resolution.replaceAll("_", " ")})`) : null,
    ].filter(Boolean));
  }

  add(event) {
    if (event.seq <= this.lastSeq) return; // seen already (a reconnect's overlap)
    this.lastSeq = event.seq;
    this.fold(event);
    const render = this[`on${event.type}`];
    const body = render ? render.call(this, event, event.data || {}) : this.generic(event);
    if (body) this.list.append(body);
    this.renderBanner();
  }

  fold(event) {
    const d = event.data || {};
    const r = this.row;
    if (event.type === "AnomalyDetected") {
      r.title = r.title || d.name; r.service = r.service || d.service;
      r.severity = r.severity || d.severity; r.opened_at = r.opened_at || event.occurred_at;
      if (r.status === "resolved") r.status = "open";
    } else if (event.type === "InvestigationStarted") advance(r, "investigating");
    else if (event.type === "RootCauseConcluded") advance(r, "diagnosed");
    else if (event.type === "SagaStarted") advance(r, "remediating");
    else if (event.type === "SagaCompensated" && r.status === "remediating") r.status = "diagnosed";
    else if (event.type === "IncidentAcknowledged") r.acknowledged_by = r.acknowledged_by || d.by;
    else if (event.type === "IncidentResolved") { r.status = "resolved"; r.resolution = d.how; }
    if (!r.status) r.status = "open";
    // What awaits approval: as the API said at `last_seq`, then as the events go on.
    if (event.seq > this.detailSeq) {
      if (event.type === "RemediationProposed" && d.mode === "approval") this.awaiting.add(d.saga_id);
      if (["RemediationApproved", "RemediationRejected", "SagaStarted", "SagaCompleted",
        "SagaCompensated"].includes(event.type)) this.awaiting.delete(d.saga_id);
    }
    this.renderHead();
  }

  item(event, kind, heading, ...body) {
    return h("li", { class: `event event-${kind}`, "data-type": event.type, "data-seq": event.seq },
      h("div", { class: "when" }, timeOf(event.occurred_at)),
      h("div", { class: "what" }, h("h3", {}, heading), ...body));
  }

  generic(event) {
    return this.item(event, "other", event.type.replace(/([a-z])([A-Z])/g, "$1 $2"),
      h("p", { class: "summary" }, summarize(event.data)));
  }

  // -- alerts and people
  onAnomalyDetected(e, d) {
    const labels = Object.entries(d.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
    const about = (d.annotations || {}).summary || (d.annotations || {}).description;
    return this.item(e, "alert", `Alert ${d.name} fired${d.service ? ` on ${d.service}` : ""}`,
      h("p", {}, d.severity ? chip(d.severity, `sev-${d.severity}`) : null,
        ` ${d.origin}, since `, timeOf(d.starts_at, true), d.value !== null && d.value !== undefined ? ` · value ${summarize(d.value)}` : ""),
      about ? h("p", {}, about) : null,
      labels ? h("p", { class: "labels" }, labels) : null);
  }

  onAnomalyResolved(e, d) {
    return this.item(e, "alert", `Alert ${d.name} resolved`, h("p", {}, "ended ", timeOf(d.ends_at, true)));
  }

  onIncidentAcknowledged(e, d) {
    return this.item(e, "person", `Acknowledged by ${d.by}`, d.comment ? h("p", {}, d.comment) : null);
  }

  onIncidentResolved(e, d) {
    return this.item(e, "resolved", `Incident resolved (${d.how.replaceAll("_", " ")})`,
      h("p", {}, `by ${d.by}`, d.summary ? `: ${d.summary}` : ""));
  }

  onNotificationSent(e, d) {
    return this.item(e, "notice", `Notified ${d.channel}: ${d.milestone.replaceAll("_", " ")}`,
      h("p", { class: "summary" }, d.target));
  }

  // -- the investigation
  onInvestigationStarted(e, d) {
    return this.item(e, "investigation", `Investigation attempt ${d.attempt} started`,
      h("p", {}, `model ${d.model} · ${d.reason}`, d.requested_by ? ` · asked by ${d.requested_by}` : ""));
  }

  onAgentStep(e, d) {
    const cost = d.cost !== null && d.cost !== undefined ? ` · $${d.cost.toFixed(4)}` : "";
    return this.item(e, "step", `Model step ${d.step} (turn ${d.turn})`,
      h("p", { class: "summary" }, `${d.model} · ${d.input_tokens} tokens in, ${d.output_tokens} out · ${duration(d.duration_ms)}${cost}`),
      ...modelParts(d.response));
  }

  onToolRequested(e, d) {
    const status = h("span", { class: "call-status" }, chip("running"));
    const outcome = h("div", { class: "outcome" });
    const node = this.item(e, "tool", h("span", {}, "Tool ", h("code", {}, d.tool_name)), status,
      argsList(d.args), outcome);
    node.id = `call-${d.tool_call_id}`;
    node.tabIndex = -1;
    node.dataset.toolCall = d.tool_call_id;
    this.calls.set(d.tool_call_id, { node, status, outcome });
    return node;
  }

  callOf(e, d) {
    let call = this.calls.get(d.tool_call_id);
    if (!call) { // an outcome whose request this page never saw: show it on its own
      this.list.append(this.onToolRequested(e, { tool_call_id: d.tool_call_id, tool_name: d.tool_name }));
      call = this.calls.get(d.tool_call_id);
    }
    return call;
  }

  onToolCompleted(e, d) {
    const call = this.callOf(e, d);
    call.status.replaceChildren(chip("completed"), ` in ${duration(d.duration_ms)}`,
      d.reused_from ? ` (reused from ${d.reused_from})` : "");
    call.outcome.replaceChildren(h("p", { class: "result" }, summarize(d.result)), jsonBlock("Result", d.result));
    return null;
  }

  onToolFailed(e, d) {
    const call = this.callOf(e, d);
    call.status.replaceChildren(chip(d.timed_out ? "timed out" : "failed", "failed"),
      d.duration_ms ? ` after ${duration(d.duration_ms)}` : "");
    call.outcome.replaceChildren(h("p", { class: "error" }, d.error));
    return null;
  }

  onRootCauseConcluded(e, d) {
    const report = d.report;
    const hypotheses = h("ol", { class: "hypotheses" }, report.hypotheses.map((hyp) => {
      const bar = h("span", { class: "fill" });
      bar.style.width = percent(hyp.confidence);
      return h("li", { class: "hypothesis" },
        h("div", { class: "hyp-head" },
          h("strong", {}, hyp.category.replaceAll("_", " ")), hyp.service ? ` of ${hyp.service}` : "",
          h("span", { class: "confidence" }, percent(hyp.confidence))),
        h("div", { class: "bar", role: "meter", "aria-valuemin": 0, "aria-valuemax": 100,
          "aria-valuenow": Math.round(hyp.confidence * 100), "aria-label": `confidence ${percent(hyp.confidence)}` }, bar),
        h("p", {}, hyp.explanation),
        this.evidence(hyp.evidence));
    }));
    const ruled = report.ruled_out || [];
    const gaps = report.gaps || [];
    return this.item(e, "report", `Root cause report · attempt ${d.attempt}`,
      report.partial ? h("p", { class: "warning" }, `Partial: ${d.partial_reason || "a limit ended it early"}`) : null,
      h("p", { class: "report-summary" }, report.summary),
      hypotheses,
      ruled.length ? h("details", {}, h("summary", {}, `Ruled out (${ruled.length})`),
        h("ul", {}, ruled.map((r) => h("li", {}, h("strong", {}, r.what), `: ${r.reason} `, this.evidence(r.evidence))))) : null,
      gaps.length ? h("details", {}, h("summary", {}, `Gaps (${gaps.length})`), h("ul", {}, gaps.map((g) => h("li", {}, g)))) : null,
      h("p", { class: "summary" }, `${d.model_requests} model requests · ${d.tool_calls} tool calls · ${d.input_tokens + d.output_tokens} tokens`));
  }

  evidence(ids) {
    if (!ids || !ids.length) return null;
    return h("p", { class: "evidence" }, "Evidence: ", ids.map((id) =>
      h("button", { type: "button", class: "evidence-id", "data-evidence": id,
        onclick: () => this.reveal(id) }, id)));
  }

  /** Scroll to a tool call and mark it, so the eye lands on the evidence. */
  reveal(id) {
    const target = document.getElementById(`call-${id}`);
    if (!target) return;
    for (const node of this.list.querySelectorAll(".highlighted")) node.classList.remove("highlighted");
    target.classList.add("highlighted");
    const raw = target.querySelector("details.raw");
    if (raw) raw.open = true;
    target.scrollIntoView({ behavior: "smooth", block: "center" });
    target.focus({ preventScroll: true });
  }

  // -- remediation
  onRemediationProposed(e, d) {
    const steps = d.steps.map((step, i) => {
      const status = h("span", { class: "step-status" }, chip("pending"));
      const note = h("span", { class: "step-note" });
      const node = h("li", { class: "saga-step", "data-step": i },
        h("code", {}, step.action), " ", h("span", { class: "params" }, summarize(step.params)), " ", status, note);
      return { node, status, note };
    });
    const status = h("span", { class: "saga-status" }, chip(d.mode === "approval" ? "awaiting approval" : "proposed", "awaiting"));
    const decided = h("p", { class: "decided" });
    const node = this.item(e, "saga", h("span", {}, "Remediation plan ", h("code", {}, d.saga_id), " ", status),
      h("p", {}, `${d.mode.replace("_", " ")} · risk ${d.risk}${d.by ? ` · proposed by ${d.by}` : ""}`),
      d.rationale ? h("p", { class: "rationale" }, d.rationale) : null,
      h("ol", { class: "saga-steps", start: 0 }, steps.map((s) => s.node)), decided);
    node.id = `saga-${d.saga_id}`;
    this.sagas.set(d.saga_id, { node, steps, status, decided, proposal: d });
    return node;
  }

  sagaStatus(d, text, kind) {
    const saga = this.sagas.get(d.saga_id);
    if (saga) saga.status.replaceChildren(chip(text, kind));
    return saga;
  }

  onRemediationApproved(e, d) {
    const saga = this.sagaStatus(d, "approved");
    if (saga) saga.decided.textContent = `Approved by ${d.by}${d.comment ? `: ${d.comment}` : ""}`;
    return this.item(e, "person", `Plan ${d.saga_id} approved by ${d.by}`, d.comment ? h("p", {}, d.comment) : null);
  }

  onRemediationRejected(e, d) {
    const saga = this.sagaStatus(d, "rejected", "failed");
    if (saga) saga.decided.textContent = `Rejected by ${d.by}${d.reason ? `: ${d.reason}` : ""}`;
    return this.item(e, "person", `Plan ${d.saga_id} rejected by ${d.by}`, d.reason ? h("p", {}, d.reason) : null);
  }

  onSagaStarted(e, d) {
    this.sagaStatus(d, "running");
    return this.item(e, "saga-event", `Saga ${d.saga_id} started${d.dry_run ? " (dry run)" : ""}`,
      d.services.length ? h("p", {}, `touches ${d.services.join(", ")}`) : null);
  }

  stepEvent(e, d, detail) {
    const state = STEP_STATES[e.type];
    const saga = this.sagas.get(d.saga_id);
    const step = saga && saga.steps[d.step];
    if (step) {
      step.status.replaceChildren(chip(state, state.replace(/ .*/, "")));
      step.note.textContent = detail ? ` ${clip(detail, 200)}` : "";
    }
    const what = e.type.startsWith("Compensation") ? "Compensation of step" : "Step";
    return this.item(e, "saga-event", `${what} ${d.step} (${d.action}) ${state}`,
      detail ? h("p", { class: state.includes("fail") || state === "escalated" ? "error" : "summary" }, detail) : null);
  }

  onSagaStepStarted(e, d) { return this.stepEvent(e, d, summarize(d.params)); }
  onSagaStepSucceeded(e, d) { return this.stepEvent(e, d, Object.keys(d.output || {}).length ? summarize(d.output) : ""); }
  onSagaStepFailed(e, d) { return this.stepEvent(e, d, `${d.error}${d.uncertain ? " (may have acted)" : ""}`); }
  onCompensationStarted(e, d) { return this.stepEvent(e, d, summarize(d.params)); }
  onCompensationSucceeded(e, d) { return this.stepEvent(e, d, ""); }
  onCompensationFailed(e, d) { return this.stepEvent(e, d, d.error); }
  onCompensationEscalated(e, d) { return this.stepEvent(e, d, `${d.error} after ${d.attempts} tries: a person must act`); }

  onVerificationMeasured(e, d) {
    return this.item(e, "saga-event", `Verification ${d.index}: ${d.ok ? "healthy" : "not yet"}`,
      h("p", {}, promqlLink(d.query), ` → ${d.observed === null ? (d.error || "no data") : summarize(d.observed)}`));
  }

  onVerificationPassed(e, d) {
    return this.item(e, "saga-event", `Verification passed`, h("p", {}, d.check));
  }

  onVerificationFailed(e, d) {
    return this.item(e, "saga-event", `Verification failed`, h("p", { class: "error" }, d.check, d.reason ? `: ${d.reason}` : ""));
  }

  onSagaCompleted(e, d) {
    this.sagaStatus(d, "completed");
    return this.item(e, "resolved", `Saga ${d.saga_id} completed`);
  }

  onSagaCompensated(e, d) {
    this.sagaStatus(d, "compensated", "failed");
    return this.item(e, "saga-event", `Saga ${d.saga_id} undone`, d.reason ? h("p", {}, d.reason) : null);
  }

  // -- the banner: what awaits a person's decision
  renderBanner() {
    const operate = state.who && state.who.scope === "operate";
    const shown = new Set([...this.banner.children].map((n) => n.dataset.saga));
    for (const node of [...this.banner.children]) {
      if (!this.awaiting.has(node.dataset.saga)) node.remove();
    }
    for (const sagaId of this.awaiting) {
      const saga = this.sagas.get(sagaId);
      if (shown.has(sagaId) || !saga) continue; // shown once its proposal is read
      const plan = saga.proposal.steps.map((s) => `${s.action} ${summarize(s.params)}`).join("; ");
      const message = h("p", { class: "banner-message", role: "alert" });
      const note = h("input", { type: "text", class: "note", "aria-label": "Comment or reason (optional)", placeholder: "Comment or reason (optional)" });
      const decide = async (approve, button) => {
        for (const b of box.querySelectorAll("button")) b.disabled = true;
        message.textContent = approve ? "Approving…" : "Rejecting…";
        const body = approve ? { saga_id: sagaId, comment: note.value } : { saga_id: sagaId, reason: note.value };
        try {
          const answer = await post(`/api/v1/incidents/${encodeURIComponent(this.id)}/${approve ? "approve" : "reject"}`, body);
          message.textContent = `${answer.event.type.replace("Remediation", "")} by ${answer.event.data.by}.`;
        } catch (error) {
          message.textContent = error.message;
          for (const b of box.querySelectorAll("button")) b.disabled = false;
          button.focus();
        }
      };
      const actions = operate
        ? h("div", { class: "actions" }, note,
          h("button", { type: "button", class: "primary approve", onclick: (ev) => decide(true, ev.target) }, "Approve"),
          h("button", { type: "button", class: "danger reject", onclick: (ev) => decide(false, ev.target) }, "Reject"))
        : h("p", { class: "summary" }, "An operate token may approve or reject it.");
      const box = h("div", { class: "banner", "data-saga": sagaId },
        h("h3", {}, "Awaiting approval"),
        h("p", {}, "Plan ", h("code", {}, sagaId), `: ${plan}`),
        saga.proposal.rationale ? h("p", { class: "rationale" }, saga.proposal.rationale) : null,
        actions, message);
      this.banner.append(box);
    }
  }
}
