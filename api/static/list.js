// The incident list: the read model's rows, then each event folded in as it comes over
// /api/v1/stream (the read model's rules, so a row is current before the projector catches up).
import { follow, api, lastSeen } from "./api.js";
import { $, h, chip, age, percent } from "./dom.js";
import { state } from "./state.js";

const STATUS_RANK = { open: 0, investigating: 1, diagnosed: 2, remediating: 3, resolved: 4 };
const list = { rows: new Map(), items: new Map() };
let chosen = () => {};

export function advance(row, status) {
  if ((STATUS_RANK[status] ?? -1) > (STATUS_RANK[row.status] ?? -1)) row.status = status;
}

/** The list's row of an incident after one more of its events (the read model's rules). */
function foldRow(event) {
  const d = event.data || {};
  let row = list.rows.get(event.incident_id);
  if (!row) {
    if (event.type !== "AnomalyDetected" && event.type !== "AnomalyPredicted") return;
    row = { incident_id: event.incident_id, status: "open", title: d.name, service: d.service,
      severity: d.severity, opened_at: event.occurred_at };
    list.rows.set(event.incident_id, row);
  }
  row.last_event_at = event.occurred_at;
  switch (event.type) {
    case "AnomalyDetected":
      if (row.status === "resolved") { row.status = "open"; row.resolution = null; }
      row.service = row.service || d.service;
      row.severity = row.severity || d.severity;
      break;
    case "InvestigationStarted": advance(row, "investigating"); break;
    case "RootCauseConcluded": {
      advance(row, "diagnosed");
      const top = d.report.hypotheses[0];
      Object.assign(row, { root_cause: top.category, root_cause_service: top.service,
        root_cause_confidence: top.confidence });
      break;
    }
    case "SagaStarted": advance(row, "remediating"); break;
    case "SagaCompensated": if (row.status === "remediating") row.status = "diagnosed"; break;
    case "IncidentResolved": row.status = "resolved"; row.resolution = d.how; break;
    default: break;
  }
  renderList();
}

function rowContent(row) {
  const cause = row.root_cause
    ? `${row.root_cause.replaceAll("_", " ")}${row.root_cause_service ? ` of ${row.root_cause_service}` : ""}`
      + (row.root_cause_confidence !== null && row.root_cause_confidence !== undefined
        ? ` (${percent(row.root_cause_confidence)})` : "")
    : "no root cause yet";
  return [
    h("span", { class: "line" },
      chip(row.status), h("span", { class: "service" }, row.service || "unknown service"),
      row.severity ? chip(row.severity, `sev-${row.severity}`) : null),
    h("span", { class: "line" },
      h("span", { class: "title" }, row.title || row.incident_id),
      h("time", { class: "age", datetime: row.opened_at, title: row.opened_at }, age(row.opened_at))),
    h("span", { class: "cause" }, cause),
  ];
}

export function renderList() {
  const ul = $("incident-list");
  const rows = [...list.rows.values()].sort((a, b) => (a.opened_at < b.opened_at ? 1 : -1));
  $("incidents-empty").hidden = rows.length > 0;
  rows.forEach((row, i) => {
    let li = list.items.get(row.incident_id);
    if (!li) {
      const link = h("a", { href: `/?incident=${encodeURIComponent(row.incident_id)}`,
        onclick: (e) => { e.preventDefault(); chosen(row.incident_id); } });
      li = h("li", { class: "incident", "data-incident": row.incident_id }, link);
      list.items.set(row.incident_id, li);
    }
    const link = li.firstChild;
    link.replaceChildren(...rowContent(row));
    const current = state.timeline && state.timeline.id === row.incident_id;
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
    if (ul.children[i] !== li) ul.insertBefore(li, ul.children[i] || null);
  });
}

/** Fill and follow the list; a click on an incident calls `choose(id)`. */
export async function startList(choose) {
  chosen = choose;
  const controller = new AbortController();
  // The stream first: what happens while the list loads is folded in, not missed.
  follow("/api/v1/stream", { after: null, onEvent: foldRow, signal: controller.signal,
    resumeFrom: lastSeen });
  try {
    const answer = await api("/api/v1/incidents?limit=50");
    for (const incident of answer.incidents) {
      const live = list.rows.get(incident.incident_id);
      list.rows.set(incident.incident_id, live ? { ...incident, ...live } : { ...incident });
    }
    renderList();
  } catch (error) { // the read model may be down: the live stream still fills the list
    $("incidents-empty").hidden = false;
    $("incidents-empty").textContent = `The list cannot be loaded: ${error.message}`;
  }
  setInterval(() => {
    for (const node of document.querySelectorAll("time.age")) node.textContent = age(node.getAttribute("datetime"));
  }, 30000);
}
