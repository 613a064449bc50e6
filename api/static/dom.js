// Building the page's DOM: every value goes in as text (text nodes, textContent), never as
// markup; and the small formats the page shows (times, durations, percentages, summaries).

export const $ = (id) => document.getElementById(id);

/** An element with attributes and children; strings become text nodes. */
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function clip(text, size) {
  const s = String(text);
  return s.length > size ? s.slice(0, size - 1) + "…" : s;
}

export function percent(x) {
  return `${Math.round(Number(x) * 100)}%`;
}

export function duration(ms) {
  if (ms === null || ms === undefined) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60000)} min ${Math.round((ms % 60000) / 1000)} s`;
}

export function age(iso) {
  if (!iso) return "";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

export function clock(iso, dated) {
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return String(iso);
  const time = at.toLocaleTimeString([], { hour12: false });
  const today = at.toDateString() === new Date().toDateString();
  return dated && !today ? `${at.toLocaleDateString()} ${time}` : time;
}

/** A time of day; with `dated`, the day too when it is not today. */
export function timeOf(iso, dated = false) {
  return h("time", { datetime: iso, title: iso }, clock(iso, dated));
}

export function chip(text, kind) {
  return h("span", { class: `chip chip-${kind || text}`.replace(/[^\w -]/g, "") }, text);
}

/** A short, readable account of a JSON value: a few keys, counts of lists. */
export function summarize(value, depth = 0) {
  if (value === null || value === undefined) return "nothing";
  if (Array.isArray(value)) return `${value.length} item${value.length === 1 ? "" : "s"}`;
  if (typeof value === "object") {
    const keys = Object.keys(value);
    if (depth > 0) return `{${clip(keys.join(", "), 60)}}`;
    const shown = keys.slice(0, 5).map((k) => `${k}: ${summarize(value[k], depth + 1)}`);
    return shown.join(" · ") + (keys.length > 5 ? ` · +${keys.length - 5} more` : "");
  }
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toPrecision(3);
  return clip(value, 80);
}

export function jsonBlock(label, value) {
  let text = JSON.stringify(value, null, 2);
  if (text && text.length > 20000) text = text.slice(0, 20000) + "\n…";
  return h("details", { class: "raw" }, h("summary", {}, label), h("pre", {}, text));
}
