// Vigil's incident timeline page: the incident list and one incident's black-box timeline,
// both live over Server-Sent Events. Plain JS modules, no build step.
import { api, auth, saw, follow, TOKEN_KEY } from "./api.js";
import { $, h } from "./dom.js";
import { renderList, startList } from "./list.js";
import { state } from "./state.js";
import { Timeline } from "./timeline.js";

const PAGE = 500; // events per request of /events
let following = null; // the open incident's stream

async function show(id, push) {
  if (push) history.pushState({ incident: id }, "", `/?incident=${encodeURIComponent(id)}`);
  if (following) following.abort();
  following = new AbortController();
  const signal = following.signal;
  const root = $("detail-body");
  $("detail-title")?.remove();
  state.timeline = null;
  renderList();
  if (!id) {
    root.replaceChildren(h("h2", { id: "detail-title", class: "placeholder" }, "Choose an incident to see its timeline."));
    return;
  }
  const view = new Timeline(id, root);
  state.timeline = view;
  renderList();
  try {
    view.seed(await api(`/api/v1/incidents/${encodeURIComponent(id)}`));
    for (let after = 0; ;) {
      const page = await api(`/api/v1/incidents/${encodeURIComponent(id)}/events?after=${after}&limit=${PAGE}`);
      if (signal.aborted) return;
      for (const event of page.events) { saw(event); view.add(event); }
      if (page.events.length < PAGE) break;
      after = page.events[page.events.length - 1].seq;
    }
  } catch (error) {
    if (signal.aborted) return;
    root.replaceChildren(h("h2", { id: "detail-title" }, "This incident cannot be shown"), h("p", { class: "error" }, error.message));
    return;
  }
  if (push) view.title.focus();
  follow(`/api/v1/incidents/${encodeURIComponent(id)}/stream`, {
    after: view.lastSeq, signal, onEvent: (event) => view.add(event),
  });
}

async function start() {
  $("forget-token").addEventListener("click", () => {
    localStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  state.who = await api("/api/v1/whoami");
  $("who").textContent = `${state.who.name} · ${state.who.scope}`;
  $("forget-token").hidden = !auth.token;
  state.config = await api("/api/v1/config");
  window.addEventListener("popstate", () => show(new URLSearchParams(location.search).get("incident"), false));
  await Promise.all([startList((id) => show(id, true)), show(new URLSearchParams(location.search).get("incident"), false)]);
  document.body.dataset.ready = "true";
}

start().catch((error) => {
  $("connection").textContent = `error: ${error.message}`;
  $("connection").className = "connection down";
});
