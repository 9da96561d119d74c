// Trunkline widget: the `initiatePhoneCall` client tool for ElevenLabs agents on a web page.
//
// Dependency-free ES module, served by the gateway at GET /widget/trunkline-widget.js.
//
//   <elevenlabs-convai agent-id="…"></elevenlabs-convai>
//   <script type="module">
//     import { attachToConvai } from "https://gateway.example.com/widget/trunkline-widget.js";
//     attachToConvai({ confirm: true });
//   </script>
//
// or, with @elevenlabs/client:
//
//   import { clientTools } from "https://gateway.example.com/widget/trunkline-widget.js";
//   Conversation.startSession({ agentId: "…", clientTools: clientTools({ confirm: true }) });
//
// The tool takes `phoneNumber` (also `phone_number`, `number`, `to`), optionally asks the visitor
// to confirm in an accessible dialog, POSTs { phoneNumber } to the gateway's /api/call/outbound,
// returns a sentence for the agent, and shows the call's live status (from the per-call event
// stream, authorised by the answer's status_token) in an aria-live region.
// See docs/SETUP.md for the snippet with its Subresource Integrity hash.

/** The English strings; pass `strings: { … }` to override any of them. */
export const DEFAULT_STRINGS = Object.freeze({
  confirmTitle: "Call this number?",
  confirmText: "We will call {number} now. Your phone will ring within seconds.",
  confirmCall: "Call me",
  confirmCancel: "Cancel",
  agentCalling: "Calling {number}; it will ring within seconds.",
  agentDeclined: "The visitor declined the call; nothing was dialled.",
  agentError: "The call could not be placed: {error}",
  missingNumber: "Phone number is required",
  networkError: "Service unavailable",
  statusLabel: "Call status",
  status: Object.freeze({
    placing: "Placing the call…",
    initiated: "Dialling {number}…",
    ringing: "Ringing…",
    "in-progress": "In progress",
    completed: "Call ended",
    busy: "The line is busy",
    "no-answer": "No answer",
    failed: "The call failed",
    canceled: "The call was cancelled",
    error: "The call could not be placed: {error}",
  }),
});

/** The parameter names the tool accepts for the number, in order. */
export const NUMBER_PARAMETERS = Object.freeze(["phoneNumber", "phone_number", "number", "to"]);

const FINAL = new Set(["completed", "busy", "no-answer", "failed", "canceled"]);

/** The gateway the module was loaded from (its own origin), else the page's. */
function defaultEndpoint() {
  try {
    return new URL(import.meta.url).origin;
  } catch {
    return typeof location === "undefined" ? "" : location.origin;
  }
}

function fill(template, values) {
  return String(template).replace(/\{(\w+)\}/g, (m, k) => (k in values ? String(values[k]) : m));
}

function mergeStrings(overrides) {
  const o = overrides || {};
  return { ...DEFAULT_STRINGS, ...o, status: { ...DEFAULT_STRINGS.status, ...(o.status || {}) } };
}

/** The number among the tool's parameters: the first non-empty accepted name, spaces, dots,
 * dashes and parentheses removed (the gateway does the real validation). */
export function pickNumber(params) {
  if (params == null) return "";
  if (typeof params === "string") return normalise(params);
  for (const name of NUMBER_PARAMETERS) {
    const v = params[name];
    if (typeof v === "string" && v.trim() !== "") return normalise(v);
    if (typeof v === "number" && Number.isFinite(v)) return normalise(String(v));
  }
  return "";
}

function normalise(s) {
  const t = s.trim().replace(/[\s.\-()\u00a0]/g, "");
  return t.startsWith("00") ? "+" + t.slice(2) : t;
}

// --- the visitor's view ------------------------------------------------------------------------

function liveRegion(opts, strings) {
  if (typeof document === "undefined") return null;
  if (opts.statusElement) {
    const el = opts.statusElement;
    if (!el.hasAttribute("role")) el.setAttribute("role", "status");
    if (!el.hasAttribute("aria-live")) el.setAttribute("aria-live", "polite");
    return el;
  }
  let el = document.getElementById("trunkline-call-status");
  if (!el) {
    el = document.createElement("div");
    el.id = "trunkline-call-status";
    el.setAttribute("role", "status");
    el.setAttribute("aria-live", "polite");
    el.setAttribute("aria-label", strings.statusLabel);
    el.style.cssText =
      "position:fixed;left:1rem;bottom:1rem;z-index:2147483646;max-width:22rem;padding:.6rem .9rem;" +
      "border-radius:.5rem;background:#1f2937;color:#fff;font:14px/1.4 system-ui,sans-serif;";
    el.hidden = true;
    document.body.appendChild(el);
  }
  return el;
}

function show(region, text, status) {
  if (!region) return;
  region.hidden = false;
  region.textContent = text;
  if (status) region.dataset.status = status;
}

/** Ask the visitor: resolves true (call) or false (cancel, Escape, closed). An accessible modal
 * <dialog>: labelled by its title, described by its text, focus on Cancel, restored after. */
export function confirmDial(number, stringsOverride) {
  const strings = mergeStrings(stringsOverride);
  if (typeof document === "undefined") return Promise.resolve(false);
  const title = fill(strings.confirmTitle, { number });
  const text = fill(strings.confirmText, { number });
  const dialog = document.createElement("dialog");
  if (typeof dialog.showModal !== "function") {
    return Promise.resolve(typeof window !== "undefined" && window.confirm(`${title}\n${text}`));
  }
  const uid = Math.random().toString(36).slice(2, 9);
  dialog.id = `trunkline-confirm-${uid}`;
  dialog.className = "trunkline-confirm";
  dialog.setAttribute("aria-labelledby", `trunkline-confirm-title-${uid}`);
  dialog.setAttribute("aria-describedby", `trunkline-confirm-text-${uid}`);
  dialog.style.cssText =
    "max-width:24rem;padding:1.2rem;border:1px solid #d1d5db;border-radius:.6rem;" +
    "font:16px/1.45 system-ui,sans-serif;color:#111827;background:#fff;";
  const h = document.createElement("h2");
  h.id = `trunkline-confirm-title-${uid}`;
  h.textContent = title;
  h.style.cssText = "margin:0 0 .5rem;font-size:1.15rem;";
  const p = document.createElement("p");
  p.id = `trunkline-confirm-text-${uid}`;
  p.textContent = text;
  p.style.cssText = "margin:0 0 1rem;";
  const buttons = document.createElement("div");
  buttons.style.cssText = "display:flex;gap:.5rem;justify-content:flex-end;";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.value = "cancel";
  cancel.className = "trunkline-cancel";
  cancel.textContent = strings.confirmCancel;
  const call = document.createElement("button");
  call.type = "button";
  call.value = "call";
  call.className = "trunkline-call";
  call.textContent = strings.confirmCall;
  for (const b of [cancel, call]) b.style.cssText = "font:inherit;padding:.4rem .9rem;cursor:pointer;";
  buttons.append(cancel, call);
  dialog.append(h, p, buttons);
  const before = document.activeElement;
  return new Promise((resolve) => {
    let done = false;
    const finish = (ok) => {
      if (done) return;
      done = true;
      if (dialog.open) dialog.close();
      dialog.remove();
      if (before && typeof before.focus === "function") before.focus();
      resolve(ok);
    };
    call.addEventListener("click", () => finish(true));
    cancel.addEventListener("click", () => finish(false));
    // Escape: the dialog's `cancel` event.
    dialog.addEventListener("cancel", (e) => {
      e.preventDefault();
      finish(false);
    });
    dialog.addEventListener("close", () => finish(false));
    document.body.appendChild(dialog);
    dialog.showModal();
    cancel.focus();
  });
}

/** Follow a call's status events until the final one; calls `onStatus(event)` for each. */
export function followStatus(endpoint, callSid, token, onStatus) {
  if (typeof EventSource === "undefined" || !token) return () => {};
  const url =
    `${endpoint}/api/calls/${encodeURIComponent(callSid)}/events` +
    `?token=${encodeURIComponent(token)}`;
  const es = new EventSource(url);
  const stop = () => es.close();
  es.addEventListener("status", (msg) => {
    let ev;
    try {
      ev = JSON.parse(msg.data);
    } catch {
      return;
    }
    onStatus(ev);
    // The server ends the stream after the final status; do not let EventSource reconnect.
    if (FINAL.has(ev.status)) stop();
  });
  es.addEventListener("error", () => {
    // A refused token (401) closes the source for good; a dropped connection retries.
    if (es.readyState === EventSource.CLOSED) stop();
  });
  return stop;
}

// --- the client tool ---------------------------------------------------------------------------

/**
 * The client tools object for ElevenLabs: `{ initiatePhoneCall }`.
 *
 * Options: `endpoint` (the gateway's origin; default: where this module was loaded from),
 * `confirm` (ask the visitor first; default true), `strings` (i18n overrides),
 * `statusElement` (an element for the live status; default: a small fixed region),
 * `onStatus(event)`, `onResult({ ok, callSid, error })`, `fetch` (for tests).
 */
export function clientTools(options = {}) {
  const opts = { confirm: true, ...options };
  const endpoint = String(opts.endpoint || defaultEndpoint()).replace(/\/+$/, "");
  const strings = mergeStrings(opts.strings);
  const doFetch = opts.fetch || (typeof fetch === "function" ? fetch.bind(globalThis) : null);

  async function initiatePhoneCall(params) {
    const number = pickNumber(params);
    const region = liveRegion(opts, strings);
    const fail = (error) => {
      show(region, fill(strings.status.error, { error }), "error");
      if (opts.onResult) opts.onResult({ ok: false, error });
      return fill(strings.agentError, { error });
    };
    if (!number) return fail(strings.missingNumber);
    if (opts.confirm && !(await confirmDial(number, opts.strings))) {
      if (opts.onResult) opts.onResult({ ok: false, declined: true });
      return strings.agentDeclined;
    }
    show(region, strings.status.placing, "placing");
    let answer;
    let httpStatus = 0;
    try {
      const resp = await doFetch(`${endpoint}/api/call/outbound`, {
        method: "POST",
        mode: "cors",
        credentials: "omit",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ phoneNumber: number }),
      });
      httpStatus = resp.status;
      answer = await resp.json().catch(() => null);
    } catch {
      return fail(strings.networkError);
    }
    if (!answer || answer.success !== true || typeof answer.call_sid !== "string") {
      const error =
        answer && typeof answer.error === "string" ? answer.error : `HTTP ${httpStatus}`;
      return fail(error);
    }
    const callSid = answer.call_sid;
    show(region, fill(strings.status.initiated, { number }), "initiated");
    if (opts.onResult) opts.onResult({ ok: true, callSid, conversationId: answer.conversation_id });
    followStatus(endpoint, callSid, answer.status_token, (ev) => {
      const text = strings.status[ev.status];
      if (text) show(region, fill(text, { number }), ev.status);
      if (opts.onStatus) opts.onStatus(ev);
    });
    return fill(strings.agentCalling, { number });
  }

  return { initiatePhoneCall };
}

/**
 * Register `initiatePhoneCall` on every `<elevenlabs-convai>` embed of the page (present or added
 * later): the embed fires `elevenlabs-convai:call` before it starts a conversation, and the tools
 * set on `event.detail.config.clientTools` are the ones it offers the agent. Other client tools
 * already set there are kept. Returns a function that stops listening.
 */
export function attachToConvai(options = {}) {
  if (typeof document === "undefined") return () => {};
  const tools = clientTools(options);
  const onCall = (event) => {
    const config = event && event.detail && event.detail.config;
    if (!config) return;
    config.clientTools = { ...(config.clientTools || {}), ...tools };
  };
  // Capture on the document sees the event whether or not it bubbles.
  document.addEventListener("elevenlabs-convai:call", onCall, true);
  return () => document.removeEventListener("elevenlabs-convai:call", onCall, true);
}

// --- loaded by a <script> tag ------------------------------------------------------------------
// `<script type="module" src=".../trunkline-widget.js" integrity="sha384-…" crossorigin="anonymous"
//  data-trunkline="convai" data-confirm="true" data-status-element="some-id"></script>` attaches to the embed by itself (the way
// to load it with Subresource Integrity, which an `import` statement cannot carry); the functions
// are also on `window.TrunklineWidget` for pages that load the module this way.
if (typeof document !== "undefined") {
  const api = { clientTools, attachToConvai, confirmDial, followStatus, pickNumber, DEFAULT_STRINGS };
  if (typeof window !== "undefined" && !window.TrunklineWidget) window.TrunklineWidget = api;
  for (const s of document.querySelectorAll("script[data-trunkline]")) {
    let same = false;
    try {
      same = new URL(s.getAttribute("src") || "", document.baseURI).href === import.meta.url;
    } catch {
      same = false;
    }
    if (!same || s.dataset.trunklineAttached) continue;
    s.dataset.trunklineAttached = "1";
    const options = { confirm: s.dataset.confirm !== "false" };
    if (s.dataset.endpoint) options.endpoint = s.dataset.endpoint;
    if (s.dataset.statusElement) {
      const el = document.getElementById(s.dataset.statusElement);
      if (el) options.statusElement = el;
    }
    if (s.dataset.trunkline === "convai") attachToConvai(options);
  }
}
