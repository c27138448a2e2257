// The explorer page: plain JavaScript over the JSON API documented in server.rs.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, sae: null, latent: null, analysed: null, searchOffset: 0 };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "style") node.setAttribute("style", value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function showMessage(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = kind === "error" ? "" : "info";
  box.hidden = !text;
}

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new Error(`the explorer server did not answer (${e.message}); is it still running?`);
  }
  const answer = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  return answer;
}

/// Runs an action with its button disabled; shows any error.
async function busy(button, action) {
  button.disabled = true;
  try {
    showMessage("");
    await action();
  } catch (e) {
    showMessage(e.message);
  } finally {
    button.disabled = false;
  }
}

const hue = (latent) => (latent * 137.508) % 360;
const colour = (latent, alpha) => `hsla(${hue(latent)}, 75%, 55%, ${alpha.toFixed(3)})`;
const fmt = (x) => (x === 0 ? "0" : Math.abs(x) >= 100 || Math.abs(x) < 0.01 ? x.toPrecision(3) : x.toFixed(2));
const shown = (text) => text.replace(/\n/g, "⏎");
const saePath = () => `/api/saes/${encodeURIComponent(state.sae)}`;

/// The view is kept in the URL's hash (`#sae=…&latent=…&text=…`): reloads and shared links
/// reopen it.
function saveHash() {
  const params = new URLSearchParams({ sae: state.sae });
  if (state.latent !== null) params.set("latent", state.latent);
  if (state.analysed && state.analysedText.length <= 300) params.set("text", state.analysedText);
  history.replaceState(null, "", `#${params}`);
}

// ---- your text --------------------------------------------------------------------------

async function analyse() {
  const text = $("text-input").value;
  const result = await api("POST", `${saePath()}/activations`, { text, hide_ultra_dense: $("hide-dense").checked });
  state.analysed = result;
  state.analysedText = text;
  saveHash();
  const box = $("tokens");
  box.replaceChildren();
  for (const token of result.tokens) {
    const best = token.top[0];
    const span = el("span", { class: "token", "data-position": token.position, title: best ? `#${best.latent} ${fmt(best.activation)}` : "no latent fires" }, shown(token.text));
    if (best) {
      const alpha = 0.12 + 0.78 * Math.min(1, best.activation / (result.max_activation || 1));
      span.style.background = colour(best.latent, alpha);
      span.style.borderBottomColor = colour(best.latent, 1);
    }
    span.addEventListener("click", () => showToken(token, span));
    box.append(span);
  }
  // Start with the token whose strongest latent is strongest; any token can be clicked.
  const strongest = result.tokens.reduce((best, t, i) =>
    (t.top[0]?.activation ?? 0) > (result.tokens[best].top[0]?.activation ?? 0) ? i : best, 0);
  if (result.tokens.length) showToken(result.tokens[strongest], box.children[strongest]);
}

function showToken(token, span) {
  document.querySelectorAll(".token.selected").forEach((t) => t.classList.remove("selected"));
  span.classList.add("selected");
  const detail = $("token-detail");
  if (!token.top.length) {
    detail.replaceChildren(el("p", { class: "muted" }, `No latent fires on «${shown(token.text)}».`));
    return;
  }
  const rows = token.top.map((l) =>
    el("tr", {},
      el("td", {}, el("span", { class: "swatch", style: `background:${colour(l.latent, 1)}` }),
        el("button", { class: "latent-link", "data-latent": l.latent, onclick: () => openLatent(l.latent) }, `#${l.latent}`)),
      el("td", {}, fmt(l.activation)),
      el("td", {}, l.label)));
  detail.replaceChildren(
    el("h3", {}, `Latents on «${shown(token.text)}» (position ${token.position})`),
    el("table", {}, el("tr", {}, el("th", {}, "latent"), el("th", {}, "activation"), el("th", {}, "label")), ...rows));
}

// ---- browse -----------------------------------------------------------------------------

async function search(more = false) {
  state.searchOffset = more ? state.searchOffset + 50 : 0;
  const params = new URLSearchParams({ sort: $("search-sort").value, offset: state.searchOffset, limit: 50 });
  if ($("search-q").value.trim()) params.set("q", $("search-q").value.trim());
  if ($("search-token").value.trim()) params.set("token", $("search-token").value.trim());
  const result = await api("GET", `${saePath()}/latents?${params}`);
  const list = $("search-results");
  if (!more) list.replaceChildren();
  for (const row of result.latents) {
    const flags = [];
    if (row.dead) flags.push(el("span", { class: "flag dead" }, "dead"));
    if (row.ultra_dense) flags.push(el("span", { class: "flag dense" }, "ultra-dense"));
    list.append(el("li", { value: row.latent },
      el("button", { class: "latent-link", "data-latent": row.latent, onclick: () => openLatent(row.latent) }, `#${row.latent}`),
      ` ${row.label.text} `, el("span", { class: "muted" }, `density ${fmt(row.density)}`), ...flags));
  }
  $("search-total").textContent = `${result.total} latents match`;
  $("search-more").hidden = state.searchOffset + 50 >= result.total;
}

// ---- feature dashboard ------------------------------------------------------------------

async function openLatent(latent) {
  const view = await api("GET", `${saePath()}/latents/${latent}`);
  state.latent = latent;
  saveHash();
  $("dashboard").hidden = false;
  $("dashboard-hint").hidden = true;
  $("latent-title").textContent = `${state.sae} · latent ${latent}`;
  const flags = $("latent-flags");
  flags.replaceChildren();
  if (view.dead) flags.append(el("span", { class: "flag dead" }, "dead: never fired on the evidence"));
  if (view.ultra_dense) flags.append(el("span", { class: "flag dense" }, "ultra-dense: fires on more than 10% of tokens"));
  showLabel(view.label);
  $("automatic-label").textContent = `automatic label: ${view.automatic_label}`;
  const stats = [["density", fmt(view.density)], ["fires", `${view.fires} / ${view.tokens} tokens`], ["max activation", fmt(view.max_activation)], ["examples", view.examples.length]];
  $("latent-stats").replaceChildren(...stats.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  drawHistogram(view.histogram);
  const examples = $("examples");
  examples.replaceChildren();
  for (const example of view.examples) {
    const item = el("li", {}, el("span", { class: "act" }, fmt(example.activation)));
    example.tokens.forEach((token, i) => {
      const alpha = view.max_activation > 0 ? Math.min(1, token.activation / view.max_activation) : 0;
      item.append(el("span", { class: i === example.focus ? "focus" : "", style: `background:${colour(latent, 0.85 * alpha)}`, title: fmt(token.activation) }, shown(token.text)));
    });
    examples.append(item);
  }
  if (!view.examples.length) examples.append(el("li", { class: "muted" }, "no activating examples"));
  const effects = (id, list) => $(id).replaceChildren(...list.map((e) => el("li", {}, el("span", { class: "tok" }, shown(e.text)), el("span", {}, fmt(e.value)))));
  effects("promoted", view.promoted);
  effects("suppressed", view.suppressed);
  // Adding the direction at the latent's largest seen activation is a strong but readable push.
  $("steer-strength").value = Math.max(1, Math.round(view.max_activation));
  $("steer-unsteered").textContent = "";
  $("steer-steered").textContent = "";
}

function showLabel(label) {
  $("label-input").value = label.source === "manual" ? label.text : "";
  $("label-input").placeholder = label.source === "manual" ? "" : `${label.text} (write a label; Enter saves)`;
  const source = $("label-source");
  source.textContent = label.source;
  source.className = `source ${label.source}`;
}

function drawHistogram(bins) {
  const svg = $("histogram");
  svg.replaceChildren();
  const max = Math.max(1, ...bins.map((b) => b.count));
  const width = 400 / Math.max(1, bins.length);
  bins.forEach((bin, i) => {
    const height = bin.count ? Math.max(1.5, (86 * Math.log1p(bin.count)) / Math.log1p(max)) : 0;
    const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    rect.setAttribute("x", i * width + 0.5);
    rect.setAttribute("y", 88 - height);
    rect.setAttribute("width", Math.max(0.5, width - 1));
    rect.setAttribute("height", height);
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = `${fmt(bin.lower)}–${fmt(bin.upper)}: ${bin.count}`;
    rect.append(title);
    svg.append(rect);
  });
  const first = bins[0], last = bins[bins.length - 1];
  $("histogram-axis").replaceChildren(el("span", {}, first ? fmt(first.lower) : ""), el("span", {}, "activation (log scale; bar height log count)"), el("span", {}, last ? fmt(last.upper) : ""));
}

async function saveLabel() {
  const label = await api("PUT", `${saePath()}/latents/${state.latent}/label`, { text: $("label-input").value });
  showLabel(label);
  showMessage(`Label of latent ${state.latent} saved.`, "info");
}

async function steer() {
  $("steer-unsteered").textContent = "…";
  $("steer-steered").textContent = "…";
  const result = await api("POST", `${saePath()}/latents/${state.latent}/steer`, {
    prompt: $("steer-prompt").value,
    strength: Number($("steer-strength").value),
    max_new_tokens: Number($("steer-tokens").value),
  });
  $("steer-unsteered").textContent = result.prompt + result.unsteered;
  $("steer-steered").textContent = result.prompt + result.steered;
}

// ---- start ------------------------------------------------------------------------------

function selectSae(id) {
  state.sae = id;
  const sae = state.info.saes.find((s) => s.id === id);
  $("sae-summary").textContent = `${sae.hook} (${sae.site}) · ${sae.architecture} · ${sae.d_sae} latents · ${sae.dead} dead, ${sae.ultra_dense} ultra-dense on ${sae.evidence_tokens} tokens`;
  $("dashboard").hidden = true;
  $("dashboard-hint").hidden = false;
  state.latent = null;
  state.analysed = null;
  saveHash();
}

async function start() {
  state.info = await api("GET", "/api/info");
  const select = $("sae-select");
  for (const sae of state.info.saes) select.append(el("option", { value: sae.id }, `${sae.id} — ${sae.hook}`));
  const limits = state.info.limits;
  $("text-limits").textContent = `up to ${limits.max_text_bytes} bytes / ${limits.max_tokens} tokens`;
  $("steer-tokens").max = limits.max_new_tokens;
  if (state.info.labels_problem) showMessage(`Labels file ${state.info.labels_file}: ${state.info.labels_problem}`);
  const params = new URLSearchParams(location.hash.slice(1));
  const wanted = state.info.saes.some((s) => s.id === params.get("sae")) ? params.get("sae") : state.info.saes[0].id;
  select.value = wanted;
  selectSae(wanted);
  select.addEventListener("change", () => busy(select, async () => { selectSae(select.value); await search(); if ($("text-input").value.trim()) await analyse(); }));
  $("analyse-button").addEventListener("click", () => busy($("analyse-button"), analyse));
  $("text-input").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("analyse-button").click(); });
  $("search-button").addEventListener("click", () => busy($("search-button"), () => search()));
  $("search-more").addEventListener("click", () => busy($("search-more"), () => search(true)));
  for (const id of ["search-q", "search-token"]) $(id).addEventListener("keydown", (e) => { if (e.key === "Enter") $("search-button").click(); });
  $("search-sort").addEventListener("change", () => $("search-button").click());
  $("hide-dense").addEventListener("change", () => { if (state.analysed) $("analyse-button").click(); });
  $("label-save").addEventListener("click", () => busy($("label-save"), saveLabel));
  $("label-input").addEventListener("keydown", (e) => { if (e.key === "Enter") $("label-save").click(); });
  $("steer-button").addEventListener("click", () => busy($("steer-button"), steer));
  await search();
  if (params.get("text")) {
    $("text-input").value = params.get("text");
    await analyse();
  }
  if (params.has("latent")) await openLatent(Number(params.get("latent")));
  document.body.dataset.ready = "true";
}

start().catch((e) => showMessage(e.message));
