// The review console (moderation/serving/console): plain JavaScript, no build step.
//
// Every call goes to POST /api/<ReviewService method> with the reviewer's token; the server
// forwards it over gRPC, so refusals are ReviewService's own sentences. Every text that comes
// from a case (notes, questions, answers, rationales, ids) is put in the page with textContent
// or as an attribute value, never parsed as HTML. The token lives in sessionStorage only.
"use strict";

const TOKEN_KEY = "moderation-review-token";
const state = { token: null, caseId: null, case: null };
const $ = (id) => document.getElementById(id);

// An element with text children only: strings become text nodes, never markup.
function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" || typeof child === "number" ? document.createTextNode(String(child)) : child);
  }
  return node;
}

function say(text, kind) {
  const status = $("status");
  status.textContent = text;
  status.className = kind || "";
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(`${code}: ${message}`);
    this.status = status;
    this.code = code;
  }
}

async function call(method, body) {
  const response = await fetch(`/api/${method}`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${state.token}` },
    body: JSON.stringify(body || {}),
    credentials: "omit",
    cache: "no-store",
  });
  let document_ = null;
  try {
    document_ = await response.json();
  } catch (error) {
    throw new ApiError(response.status, "UNKNOWN", `the server answered ${response.status} without JSON`);
  }
  if (!response.ok) throw new ApiError(response.status, document_.code || "UNKNOWN", document_.message || "");
  return document_;
}

function failed(error) {
  if (error instanceof ApiError) {
    say(`Refused (${error.status} ${error.message})`, "error");
    if (error.status === 401) signOut(false);
  } else {
    say(`The console could not reach the server: ${error.message}`, "error");
  }
}

const short = (name, prefix) => String(name || "").replace(prefix, "");
const when = (unix) => (unix ? new Date(unix * 1000).toISOString().replace("T", " ").slice(0, 19) : "-");

// --- signing in ----------------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  state.token = token;
  try {
    await refreshQueue();
  } catch (error) {
    state.token = null;
    failed(error);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  showConsole();
  say("Signed in. Press n for the next case, ? for help.", "ok");
}

function showConsole() {
  if (document.activeElement) document.activeElement.blur(); // the keys go to the console, not the hidden token box
  $("login").hidden = true;
  $("console").hidden = false;
  $("sign-out").hidden = false;
}

function signOut(cleanly) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.caseId = null;
  $("console").hidden = true;
  $("sign-out").hidden = true;
  $("login").hidden = false;
  $("case-body").hidden = true;
  if (cleanly) say("Signed out.", "ok");
}

// --- the queue -----------------------------------------------------------------------------

async function refreshQueue() {
  const reply = await call("ListCases", { status: "CASE_STATUS_OPEN", page_size: 100 });
  $("queue-depth").textContent = `${reply.open_cases} open`;
  const items = reply.cases.map((c) => {
    const button = el(
      "button",
      { type: "button", "data-case-id": c.case_id, class: c.case_id === state.caseId ? "current" : "" },
      `${c.category_id} · ${c.policy_id} v${c.policy_version}`,
      el("span", { class: "case-id" }, ` ${c.case_id.slice(0, 8)}`),
      c.lease_holder ? el("span", { class: "leased" }, `leased by ${c.lease_holder} until ${when(c.lease_expires_at)}`) : null,
    );
    button.addEventListener("click", () => leaseCase(c.case_id).catch(failed));
    return el("li", {}, button);
  });
  $("queue").replaceChildren(...items);
}

async function nextCase() {
  const reply = await call("LeaseNext", {});
  if (!reply.case) {
    say("No open case is free right now.", "ok");
    await refreshQueue();
    return;
  }
  await loadCase(reply.case.case_id);
  say(`Leased case ${reply.case.case_id} until ${when(reply.case.lease_expires_at)} UTC.`, "ok");
}

async function leaseCase(caseId) {
  const reply = await call("LeaseCase", { case_id: caseId });
  await loadCase(caseId);
  say(`Leased case ${caseId} until ${when(reply.case.lease_expires_at)} UTC.`, "ok");
}

// --- one case ------------------------------------------------------------------------------

async function loadCase(caseId) {
  const reply = await call("GetCase", { case_id: caseId, include_thumbnail: true });
  state.caseId = caseId;
  state.case = reply.case;
  renderCase(reply);
  await Promise.all([renderAudit(caseId), refreshQueue()]);
}

function renderCase(reply) {
  const c = reply.case;
  $("case-title").textContent = `Case ${c.case_id}`;
  $("case-body").hidden = false;

  const image = $("thumbnail");
  setVeiled(true); // every case starts blurred and greyscale
  if (reply.thumbnail_jpeg) {
    image.src = `data:image/jpeg;base64,${reply.thumbnail_jpeg}`;
    image.hidden = false;
    $("reveal").hidden = false;
    $("no-thumbnail").hidden = true;
  } else {
    image.removeAttribute("src");
    image.hidden = true;
    $("reveal").hidden = true;
    $("no-thumbnail").hidden = false;
    $("no-thumbnail").textContent = reply.thumbnails_kept
      ? "No thumbnail is kept for this case (evicted or past its retention)."
      : "This server keeps no thumbnails: set MODERATION_KEEP_THUMBNAILS (or MODERATION_THUMBNAIL_STORE) to see images.";
  }
  $("frame").textContent = `deciding frame ${c.deciding_frame}`;

  const facts = [
    ["Status", short(c.status, "CASE_STATUS_")],
    ["Policy", `${c.policy_id} version ${c.policy_version}`],
    ["Category", c.category_id],
    ["Why", c.reason],
    ["Deciding frame", String(c.deciding_frame)],
    ["Opened (UTC)", when(c.opened_at)],
    ["Request", `${c.request_id} from ${c.caller}`],
    ["Model", c.model_id],
    ["Lease", c.lease_holder ? `${c.lease_holder} until ${when(c.lease_expires_at)} UTC` : "none"],
    ["Reopened", `${c.reopened} times`],
  ];
  for (const m of c.bank_matches) facts.push(["Bank match", `${m.bank}: ${m.content_id} (${short(m.signal_type, "BANK_SIGNAL_TYPE_")}, distance ${m.distance})`]);
  $("facts").replaceChildren(...facts.flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]));

  $("categories").tBodies[0].replaceChildren(
    ...c.categories.map((k) => {
      const meter = el("span", { class: "meter", "aria-hidden": "true" });
      const fill = el("span", { class: "fill" });
      fill.style.width = `${Math.max(0, Math.min(1, k.score)) * 100}%`;
      const review = el("span", { class: "mark" });
      review.style.left = `${k.review_threshold * 100}%`;
      const block = el("span", { class: "mark block" });
      block.style.left = `${k.block_threshold * 100}%`;
      meter.append(fill, review, block);
      return el(
        "tr",
        {},
        el("td", {}, k.category_id, meter),
        el("td", { class: "num" }, Number(k.score).toFixed(4)),
        el("td", { class: "num" }, String(k.review_threshold)),
        el("td", { class: "num" }, String(k.block_threshold)),
        el("td", {}, short(k.band, "BAND_")),
        el("td", {}, short(k.action, "ACTION_") + (k.forced_by ? ` (by ${k.forced_by})` : "")),
        el("td", {}, k.clause_id, el("span", { class: "clause-text" }, k.clause_text || "(the clause text of this policy version is no longer served)")),
      );
    }),
  );
  $("rationale").textContent = c.rationale || "The explainer gave no rationale for this case.";
  renderQuestions(c.questions);

  const clauses = c.categories.map((k) => el("option", { value: k.clause_id }, `${k.clause_id} (${k.category_id})`));
  $("clause").replaceChildren(...clauses);
  const own = c.categories.find((k) => k.category_id === c.category_id);
  if (own) $("clause").value = own.clause_id;

  const decision = $("decision");
  if (c.decision && c.status === "CASE_STATUS_DECIDED") {
    const d = c.decision;
    decision.replaceChildren(
      `${d.violates ? "Violates" : "Does not violate"}${d.clause_id ? ` clause ${d.clause_id}` : ""}, decided by ${d.decided_by} at ${when(d.decided_at)} UTC.`,
      d.note ? el("span", { class: "note" }, ` Note: ${d.note}`) : "",
    );
  } else {
    decision.textContent = "Not decided yet.";
  }
}

function renderQuestions(questions) {
  const items = (questions || []).map((q) =>
    el(
      "li",
      {},
      el("span", { class: "question" }, q.question),
      el("span", { class: "answer" }, el("span", { class: "advisory" }, "advisory"), q.answer),
      el("small", {}, `asked by ${q.asked_by} at ${when(q.asked_at)} UTC; answered by ${q.model}`),
    ),
  );
  $("questions").replaceChildren(...items);
}

async function renderAudit(caseId) {
  const reply = await call("GetCaseAudit", { case_id: caseId });
  $("audit").tBodies[0].replaceChildren(
    ...reply.entries.map((e) =>
      el("tr", {}, el("td", {}, when(e.at)), el("td", {}, e.who), el("td", {}, e.action), el("td", {}, `${e.policy_id} ${e.policy_version}`), el("td", {}, e.detail)),
    ),
  );
}

// r reveals the image and r again veils it: the button says which one it will do.
function setVeiled(veiled) {
  $("thumbnail").classList.toggle("veiled", veiled);
  const button = $("reveal");
  button.setAttribute("aria-pressed", String(!veiled));
  button.firstChild.textContent = veiled ? "Reveal (" : "Hide (";
}

function reveal() {
  setVeiled(!$("thumbnail").classList.contains("veiled"));
}

async function decide(violates) {
  if (!state.caseId) return say("No case: press n for the next one.", "error");
  const body = { case_id: state.caseId, violates, note: $("note").value };
  if (violates) body.clause_id = $("clause").value;
  await call("DecideCase", body);
  $("note").value = "";
  await loadCase(state.caseId);
  say(`Decided: ${violates ? "violates" : "does not violate"}. Press n for the next case.`, "ok");
}

async function ask(event) {
  event.preventDefault();
  if (!state.caseId) return say("No case: press n for the next one.", "error");
  const question = $("question").value;
  say("Asking the explainer...", "");
  const reply = await call("AskCase", { case_id: state.caseId, question });
  $("question").value = "";
  $("question").blur();
  renderQuestions(reply.case.questions);
  await renderAudit(state.caseId);
  say("The explainer answered (advisory: it decides nothing).", "ok");
}

// --- keyboard ------------------------------------------------------------------------------

function toggleHelp() {
  const help = $("help");
  if (help.open) help.close();
  else help.showModal();
}

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(event.target.tagName);
  if (event.key === "Escape" && typing) {
    event.target.blur();
    return;
  }
  if ($("help").open) {
    if (event.key === "?") $("help").close();
    return;
  }
  if (typing || !state.token) return;
  const actions = {
    n: () => nextCase(),
    r: () => reveal(),
    v: () => decide(true),
    c: () => decide(false),
    a: () => $("question").focus(),
    "?": () => toggleHelp(),
  };
  const action = actions[event.key];
  if (!action) return;
  event.preventDefault();
  Promise.resolve(action()).catch(failed);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut(true));
  $("help-button").addEventListener("click", toggleHelp);
  $("refresh").addEventListener("click", () => refreshQueue().catch(failed));
  $("reveal").addEventListener("click", reveal);
  $("violates").addEventListener("click", () => decide(true).catch(failed));
  $("benign").addEventListener("click", () => decide(false).catch(failed));
  $("ask-form").addEventListener("submit", (event) => ask(event).catch(failed));
  document.addEventListener("keydown", onKey);
  state.token = sessionStorage.getItem(TOKEN_KEY);
  if (state.token) {
    showConsole();
    refreshQueue().catch(failed);
  }
});
