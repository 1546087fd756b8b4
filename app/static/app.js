// bertserve's page: fills index.html in from the public API, and nothing else.
//
// Calls only /info, /fill-mask, /embed, /embed_sparse, /decode, /rerank and /tokenize, with the
// same JSON any client sends, so the page shows exactly what clients get; an API error is shown as
// the API's own `error` message. It follows hot-swaps: every response's X-Model-Version is compared
// with the version shown, and /info is refetched when they differ (and polled every few seconds
// while the page is visible). Panels follow the model's capabilities in /info: the core ones are
// disabled with the reason, the specialist ones (sparse: an MLM head; rerank: a cross-encoder)
// hidden, since a rerank box on a fill-mask model is noise, not information.
//
// API keys: when the server answers 401 the page asks for a key, keeps it in sessionStorage (this
// tab only, gone when it closes: never localStorage, never the URL, where it would outlive the
// session or leak into history and logs) and sends it as `Authorization: Bearer` on every call.
// Without keys configured no 401 comes, and nothing of this shows.
//
// Deliberately not here: innerHTML (model output and user text are data, never markup), any
// request to another origin, inline styles in markup (sizes and colours go through the CSSOM,
// which the Content-Security-Policy allows), and client-side checks that would hide the API's
// own validation messages.
"use strict";

(function () {
  const POLL_MS = 5000;
  // What a server whose /info predates a capability is assumed to do: the first three always
  // existed; sparse and rerank are only ever shown when /info says so. The order is the model
  // panel's.
  const DEFAULT_CAPABILITIES = {
    fill_mask: true,
    embed: true,
    sparse: false,
    rerank: false,
    tokenize: true,
  };
  const CAPABILITY_NAMES = {
    fill_mask: "fill-mask",
    embed: "embeddings",
    sparse: "sparse",
    rerank: "rerank",
    tokenize: "tokenize",
  };
  const SIM_MAX = 8;
  const SPARSE_TOP = 20; // the heaviest terms shown; one /decode call at the default batch limit
  const KEY_STORE = "bertserve.api-key";

  const shown = { version: null, info: null, exampleTouched: false, keyNeeded: false };
  let infoRequest = null;
  let infoSeq = 0;
  // Token strings by vocabulary id, for the model version they were decoded with: the sparse
  // panel decodes only the ids it has not seen, and a hot swap (another vocabulary) empties it.
  let vocab = { version: null, tokens: new Map() };
  const $ = (id) => document.getElementById(id);

  // --- DOM -----------------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function showError(panel, message) {
    const box = panel.querySelector(".error");
    box.textContent = message;
    box.hidden = false;
  }

  function clearError(panel) {
    const box = panel.querySelector(".error");
    box.textContent = "";
    box.hidden = true;
  }

  function formatScore(score) {
    return score >= 0.001 ? score.toFixed(3) : score.toExponential(1);
  }

  // --- API -----------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }

    toString() {
      return this.status ? `Error ${this.status}: ${this.message}` : this.message;
    }
  }

  // One call of the public API: resolves to {data, ms, version}, or throws an ApiError whose
  // message is the API's `error` text.
  async function api(path, body) {
    const init = { headers: { accept: "application/json" }, cache: "no-store" };
    const key = apiKey.get();
    if (key) init.headers.authorization = `Bearer ${key}`;
    if (body !== undefined) {
      init.method = "POST";
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const started = performance.now();
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      throw new ApiError("the server cannot be reached", 0);
    }
    let data = null;
    try {
      data = await response.json();
    } catch (e) {
      data = null; // not JSON (a proxy's error page): the status says what happened
    }
    const ms = performance.now() - started;
    const version = response.headers.get("x-model-version");
    if (path !== "/info") noticeVersion(version);
    if (!response.ok) {
      let message = data && typeof data.error === "string" ? data.error : response.statusText;
      const retry = response.headers.get("retry-after");
      if (response.status === 429 && retry) message += ` (retry after ${retry} s)`;
      const error = new ApiError(message || "request failed", response.status);
      if (response.status === 401) apiKey.refused(error, key);
      throw error;
    }
    return { data, ms, version };
  }

  // --- API key -------------------------------------------------------------------------------
  const apiKey = {
    // Kept in memory too: sessionStorage can be unavailable (storage disabled), and the page
    // should still work for as long as it stays open.
    memory: "",

    get() {
      try {
        return sessionStorage.getItem(KEY_STORE) || "";
      } catch (e) {
        return this.memory;
      }
    },

    set(key) {
      this.memory = key;
      try {
        if (key) sessionStorage.setItem(KEY_STORE, key);
        else sessionStorage.removeItem(KEY_STORE);
      } catch (e) {
        // memory only (see above)
      }
    },

    // A 401: the server wants a key (none was sent) or refused the one sent (its message shown).
    // Polling pauses until a key is entered: a refused request every few seconds from an idle
    // tab would only fill the server's audit log.
    refused(error, sent) {
      shown.keyNeeded = true;
      // A refused key is forgotten (it will not start working), but stays in the field to fix.
      if (sent && sent === this.get()) this.set("");
      const form = $("key-form");
      $("key-set").hidden = true;
      if (sent) showError(form, error.toString());
      else clearError(form);
      if (form.hidden) {
        form.hidden = false;
        $("key-input").focus();
      }
    },

    // /info answered: the key (if any) works. Show that one is in use only where keys are on.
    accepted(info) {
      shown.keyNeeded = false;
      const form = $("key-form");
      form.hidden = true;
      clearError(form);
      $("key-input").value = "";
      $("key-set").hidden = !(info.api_keys && this.get());
    },
  };

  function useKey(event) {
    event.preventDefault();
    apiKey.set($("key-input").value.trim());
    refreshInfo({ force: true });
  }

  function forgetKey() {
    apiKey.set("");
    $("key-set").hidden = true;
    refreshInfo({ force: true });
  }

  // A response computed by another model than the one shown: the server hot-swapped.
  function noticeVersion(version) {
    if (version && shown.version && version !== shown.version) refreshInfo();
  }

  // Runs a panel's request, ignoring answers that a newer submit of the same panel overtook.
  async function submit(panel, call, render) {
    const seq = (panel.seq = (panel.seq || 0) + 1);
    const result = panel.querySelector(".result");
    panel.setAttribute("aria-busy", "true");
    clearError(panel);
    try {
      const answer = await call();
      if (seq !== panel.seq) return;
      result.replaceChildren();
      render(result, answer);
    } catch (e) {
      if (seq !== panel.seq) return;
      result.replaceChildren();
      showError(panel, e instanceof ApiError ? e.toString() : String(e.message || e));
    } finally {
      if (seq === panel.seq) panel.removeAttribute("aria-busy");
    }
  }

  function meta(answer, ...parts) {
    return el(
      "p",
      { class: "meta" },
      ...parts.map((p) => p + " · "),
      el("span", { class: "latency" }, `${Math.round(answer.ms)} ms`),
      ` · ${answer.version || "?"}`,
    );
  }

  // --- model panel ---------------------------------------------------------------------------
  function capabilities(model) {
    const caps = { ...DEFAULT_CAPABILITIES };
    const given = model?.capabilities;
    for (const key of Object.keys(caps)) {
      if (Array.isArray(given)) {
        caps[key] = given.includes(key) || given.includes(key.replace("_", "-"));
      } else if (given && typeof given === "object" && typeof given[key] === "boolean") {
        caps[key] = given[key];
      }
    }
    return caps;
  }

  // Fetches /info and renders it. Concurrent callers share one request, except a forced one (a
  // new key): it starts afresh, and the answer of the request it overtook is dropped, so an old
  // key's 401 never lands after the new key's success.
  function refreshInfo({ force = false } = {}) {
    if (infoRequest && !force) return infoRequest;
    const seq = ++infoSeq;
    const request = api("/info")
      .then(({ data }) => {
        if (seq !== infoSeq) return;
        apiKey.accepted(data);
        renderInfo(data);
      })
      .catch((e) => {
        if (seq !== infoSeq) return;
        const status = $("status");
        status.textContent =
          e.status === 401 ? "This server needs an API key" : `Model unavailable: ${e.message}`;
        status.dataset.state = e.status === 401 ? "locked" : "down";
      })
      .finally(() => {
        if (infoRequest === request) infoRequest = null;
      });
    infoRequest = request;
    return request;
  }

  function fact(list, name, label, value, title) {
    list.append(el("dt", {}, label), el("dd", { "data-field": name, title }, String(value)));
  }

  function renderInfo(info) {
    const panel = $("model-panel");
    const list = $("model-info");
    const model = info.model;
    shown.info = info;
    clearError(panel);
    list.replaceChildren();
    const status = $("status");
    if (!model) {
      shown.version = null;
      status.textContent = `No model is serving: ${info.status}`;
      status.dataset.state = "down";
      showError(panel, `No model is serving: ${info.status}`);
      return;
    }
    shown.version = model.version;
    status.textContent = info.ready ? `Serving ${model.version}` : `Not ready: ${info.status}`;
    status.dataset.state = info.ready ? "ok" : "down";
    const cfg = model.config || {};
    const caps = capabilities(model);
    fact(list, "name", "Name", model.name);
    fact(list, "version", "Version", model.version);
    fact(list, "sha256", "sha256", `${model.sha256.slice(0, 12)}…`, model.sha256);
    fact(
      list,
      "shape",
      "Shape",
      `${cfg.num_hidden_layers} layers · hidden ${cfg.hidden_size} · ` +
        `${cfg.num_attention_heads} heads · vocab ${model.vocab_size}`,
    );
    fact(list, "parameters", "Parameters", Number(model.parameters).toLocaleString("en"));
    fact(list, "pooling", "Pooling", cfg.pooling || "mean");
    fact(list, "max-tokens", "Max tokens", model.max_input_tokens);
    const names = Object.keys(caps).filter((k) => caps[k]);
    fact(list, "capabilities", "Capabilities", names.map((k) => CAPABILITY_NAMES[k]).join(", "));

    const missing = [];
    for (const section of document.querySelectorAll("[data-capability]")) {
      const key = section.dataset.capability;
      const ok = caps[key];
      section.querySelector("fieldset").disabled = !ok;
      if ("optional" in section.dataset) {
        // A specialist panel comes and goes with the model; what it showed was another model's.
        if (!ok && !section.hidden) {
          section.seq = (section.seq || 0) + 1; // drops an answer still on its way
          section.querySelector(".result").replaceChildren();
          clearError(section);
          section.removeAttribute("aria-busy");
        }
        section.hidden = !ok;
        continue;
      }
      const note = section.querySelector(".capability-note");
      section.classList.toggle("unavailable", !ok);
      note.hidden = ok;
      note.textContent = ok ? "" : unavailableReason(key);
      if (!ok) missing.push(unavailableReason(key));
    }
    const modelNote = $("model-note");
    modelNote.hidden = missing.length === 0;
    modelNote.textContent = missing.join(" ");

    const limits = info.limits || {};
    if (limits.max_top_k) $("fill-top-k").max = limits.max_top_k;
    $("sim-max").textContent = String(similarityMax());
    // The example suits the model: a cased vocabulary gets a capital letter.
    const text = $("fill-text");
    if (!shown.exampleTouched && model.lowercase === false) {
      text.value = "Return a new [MASK] containing the items of the list.";
    }
  }

  function unavailableReason(key) {
    if (key === "fill_mask") {
      return "This model has no masked-language-model head, so fill-mask is unavailable.";
    }
    return `This model does not support ${CAPABILITY_NAMES[key]}.`;
  }

  function similarityMax() {
    return Math.min(SIM_MAX, shown.info?.limits?.max_client_batch || SIM_MAX);
  }

  // --- fill-mask -----------------------------------------------------------------------------
  function fillMask(event) {
    event.preventDefault();
    const body = { inputs: $("fill-text").value };
    const topK = $("fill-top-k").value.trim();
    if (topK !== "") body.top_k = Number(topK); // "2.5" or "x": the API says what is wrong
    const targets = $("fill-targets").value.split(/[\s,]+/).filter(Boolean);
    if (targets.length) body.targets = targets;
    submit($("fill-panel"), () => api("/fill-mask", body), renderFill);
  }

  function renderFill(result, answer) {
    const masks = answer.data.predictions[0];
    result.append(meta(answer, `${masks.length} [MASK]`));
    masks.forEach((candidates, i) => {
      const title = masks.length > 1 ? `[MASK] ${i + 1} of ${masks.length}` : "[MASK]";
      const preview = el("p", { class: "sequence" }, candidates.length ? candidates[0].sequence : "");
      const list = el("ol", { class: "bars" });
      for (const c of candidates) {
        const bar = el("span", { class: "bar" });
        bar.style.width = `${Math.min(1, Math.max(0, c.score)) * 100}%`;
        const row = el(
          "li",
          { class: "candidate", title: c.sequence, tabindex: "0", "data-score": c.score },
          el("span", { class: "token" }, c.token_str),
          el("span", { class: "track" }, bar),
          el("span", { class: "score" }, formatScore(c.score)),
        );
        const show = () => {
          preview.textContent = c.sequence;
        };
        row.addEventListener("mouseenter", show);
        row.addEventListener("focus", show);
        list.append(row);
      }
      result.append(el("div", { class: "mask-block" }, el("h3", {}, title), preview, list));
    });
  }

  // --- similarity ----------------------------------------------------------------------------
  function similarity(event) {
    event.preventDefault();
    const panel = $("sim-panel");
    const sentences = $("sim-text")
      .value.split("\n")
      .map((s) => s.trim())
      .filter(Boolean);
    const max = similarityMax();
    if (sentences.length < 2 || sentences.length > max) {
      panel.seq = (panel.seq || 0) + 1;
      panel.querySelector(".result").replaceChildren();
      showError(panel, `Enter 2 to ${max} sentences, one per line (got ${sentences.length}).`);
      return;
    }
    // No pooling field: the model's default, as for any client that leaves it out.
    const call = () => api("/embed", { inputs: sentences, normalize: true });
    submit(panel, call, (result, answer) => renderSimilarity(result, answer, sentences));
  }

  function dot(a, b) {
    let sum = 0;
    for (let i = 0; i < a.length; i++) sum += a[i] * b[i];
    return sum;
  }

  function cellColour(cell, value) {
    const v = Math.max(-1, Math.min(1, value));
    // White at 0, deepening blue towards 1 and orange towards -1.
    const hue = v >= 0 ? 212 : 28;
    cell.style.backgroundColor = `hsl(${hue}, 75%, ${Math.round(97 - 52 * Math.abs(v))}%)`;
    cell.style.color = Math.abs(v) > 0.55 ? "#fff" : "#111";
  }

  function renderSimilarity(result, answer, sentences) {
    const vectors = answer.data;
    const pooling = shown.info?.model?.config?.pooling || "mean";
    result.append(meta(answer, `${vectors.length} × ${vectors[0].length}`, `${pooling} pooling`));
    const head = el("tr", {}, el("th", { scope: "col" }, ""));
    sentences.forEach((s, j) => head.append(el("th", { scope: "col", title: s }, String(j + 1))));
    const body = el("tbody");
    vectors.forEach((a, i) => {
      const row = el("tr", {}, el("th", { scope: "row", title: sentences[i] }, String(i + 1)));
      vectors.forEach((b, j) => {
        const value = dot(a, b);
        const shownValue = Math.abs(value) < 0.005 ? 0 : value;
        const cell = el(
          "td",
          { "data-value": value, title: `${sentences[i]} · ${sentences[j]}` },
          shownValue.toFixed(2),
        );
        cellColour(cell, value);
        row.append(cell);
      });
      body.append(row);
    });
    const table = el(
      "table",
      { class: "grid" },
      el("caption", {}, "Cosine similarity"),
      el("thead", {}, head),
      body,
    );
    const legend = el("ol", { class: "legend" }, ...sentences.map((s) => el("li", {}, s)));
    result.append(el("div", { class: "scroll" }, table), legend);
  }

  // --- sparse terms --------------------------------------------------------------------------
  function sparse(event) {
    event.preventDefault();
    const text = $("sparse-text").value;
    submit($("sparse-panel"), () => sparseTerms(text), renderSparse);
  }

  // /embed_sparse, then the heaviest ids turned into tokens by /decode: one call of single-id
  // lists (a flat list would glue "##" pieces to their neighbour), with `skip_special_tokens:
  // false` since [CLS] or [SEP] may carry weight too; chunked to the server's batch limit, and
  // only for ids not decoded before under the same model version. Both answers must come from
  // the same model (a swap in between means another vocabulary): else it starts once more.
  async function sparseTerms(text) {
    for (let attempt = 0; ; attempt++) {
      const answer = await api("/embed_sparse", { inputs: text });
      const weights = answer.data[0];
      const top = [...weights]
        .sort((a, b) => b.value - a.value || a.index - b.index)
        .slice(0, SPARSE_TOP);
      if (vocab.version !== answer.version) vocab = { version: answer.version, tokens: new Map() };
      const cache = vocab;
      const missing = top.map((w) => w.index).filter((id) => !cache.tokens.has(id));
      const size = Math.max(1, shown.info?.limits?.max_client_batch || SPARSE_TOP);
      const chunks = [];
      for (let i = 0; i < missing.length; i += size) chunks.push(missing.slice(i, i + size));
      const decoded = await Promise.all(
        chunks.map((ids) =>
          api("/decode", { ids: ids.map((id) => [id]), skip_special_tokens: false }),
        ),
      );
      if (decoded.every((d) => d.version === answer.version)) {
        decoded.forEach((d, c) => chunks[c].forEach((id, i) => cache.tokens.set(id, d.data[i])));
        const terms = top.map((w) => ({ ...w, token: cache.tokens.get(w.index) }));
        return { ...answer, data: { terms, nonZero: weights.length } };
      }
      if (attempt > 0) throw new ApiError("the model changed during the request; try again", 0);
    }
  }

  function renderSparse(result, answer) {
    const { terms, nonZero } = answer.data;
    const size = shown.info?.model?.vocab_size;
    const dims = size ? `${nonZero} of ${size} dimensions non-zero` : `${nonZero} non-zero`;
    result.append(meta(answer, dims, `top ${terms.length}`));
    // Weights are log(1 + relu(logit)): unbounded, so bars are relative to the heaviest term.
    const max = terms.length ? terms[0].value : 1;
    const list = el("ol", { class: "bars" });
    for (const t of terms) {
      const bar = el("span", { class: "bar" });
      bar.style.width = `${max > 0 ? (t.value / max) * 100 : 0}%`;
      list.append(
        el(
          "li",
          { class: "term", title: `id ${t.index}`, "data-index": t.index, "data-value": t.value },
          el("span", { class: "token" }, t.token),
          el("span", { class: "track" }, bar),
          el("span", { class: "score" }, t.value.toFixed(3)),
        ),
      );
    }
    result.append(list);
  }

  // --- rerank --------------------------------------------------------------------------------
  function rerank(event) {
    event.preventDefault();
    // Blank lines are not documents; everything else (none at all, too many) the API judges.
    const texts = $("rerank-docs")
      .value.split("\n")
      .map((s) => s.trim())
      .filter(Boolean);
    const body = { query: $("rerank-query").value, texts };
    submit($("rerank-panel"), () => api("/rerank", body), (result, answer) =>
      renderRerank(result, answer, texts),
    );
  }

  function renderRerank(result, answer, texts) {
    const ranked = answer.data;
    const activation = shown.info?.model?.capabilities?.score_activation || "sigmoid";
    const scores = ranked.map((r) => r.score);
    const low = Math.min(...scores);
    const high = Math.max(...scores);
    // Sigmoid scores are probabilities: bars as wide as the score. Any other activation (tanh,
    // identity) may leave [0, 1]: bars then span the lowest to the highest score, and say so.
    const absolute = activation === "sigmoid" && low >= 0 && high <= 1;
    const width = (s) => (absolute ? s : high > low ? (s - low) / (high - low) : 1);
    result.append(meta(answer, `${ranked.length} documents`, `${activation} scores`));
    if (!absolute) {
      result.append(el("p", { class: "meta" }, "Bars run from the lowest to the highest score."));
    }
    const list = el("ol", { class: "bars ranking" });
    for (const r of ranked) {
      const bar = el("span", { class: "bar" });
      bar.style.width = `${Math.min(1, Math.max(0, width(r.score))) * 100}%`;
      list.append(
        el(
          "li",
          { class: "ranked", "data-index": r.index, "data-score": r.score },
          el("span", { class: "doc" }, el("small", {}, `doc ${r.index + 1}`), " ", texts[r.index]),
          el("span", { class: "track" }, bar),
          // A logit may be negative: formatScore's small-probability notation would not fit it.
          el("span", { class: "score" }, absolute ? formatScore(r.score) : r.score.toFixed(3)),
        ),
      );
    }
    result.append(list);
  }

  // --- tokens --------------------------------------------------------------------------------
  function tokenize(event) {
    event.preventDefault();
    const text = $("tok-text").value;
    submit($("tok-panel"), () => api("/tokenize", { inputs: text }), (result, answer) =>
      renderTokens(result, answer, text),
    );
  }

  function renderTokens(result, answer, text) {
    const tokens = answer.data[0];
    // Offsets count code points (Python), not UTF-16 units: index an array of code points.
    const chars = Array.from(text);
    const source = el("p", { class: "source" });
    const list = el("ol", { class: "chips" });
    const pairs = [];
    let pos = 0;
    tokens.forEach((t, i) => {
      const chip = el(
        "li",
        { class: t.special ? "chip special" : "chip", tabindex: "0", "data-index": i },
        el("code", {}, t.token),
        el("small", {}, String(t.id)),
      );
      list.append(chip);
      if (t.start === null || t.stop === null || t.start < pos) return;
      if (t.start > pos) source.append(chars.slice(pos, t.start).join(""));
      const mark = el(
        "mark",
        { class: `${t.special ? "unk" : ""} shade-${i % 2}`.trim(), "data-index": i },
        chars.slice(t.start, t.stop).join(""),
      );
      mark.title = `${t.token} (${t.id})`;
      source.append(mark);
      pairs.push([chip, mark]);
      pos = t.stop;
    });
    if (pos < chars.length) source.append(chars.slice(pos).join(""));
    for (const [chip, mark] of pairs) {
      for (const node of [chip, mark]) {
        node.addEventListener("mouseenter", () => toggle(chip, mark, true));
        node.addEventListener("mouseleave", () => toggle(chip, mark, false));
      }
      chip.addEventListener("focus", () => toggle(chip, mark, true));
      chip.addEventListener("blur", () => toggle(chip, mark, false));
    }
    result.append(meta(answer, `${tokens.length} tokens`), source, list);
  }

  function toggle(chip, mark, on) {
    chip.classList.toggle("active", on);
    mark.classList.toggle("active", on);
  }

  // --- wiring --------------------------------------------------------------------------------
  function ctrlEnterSubmits(form) {
    form.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
  }

  function start() {
    const forms = {
      "fill-form": fillMask,
      "sim-form": similarity,
      "sparse-form": sparse,
      "rerank-form": rerank,
      "tok-form": tokenize,
    };
    for (const [id, handler] of Object.entries(forms)) {
      $(id).addEventListener("submit", handler);
      ctrlEnterSubmits($(id));
    }
    $("key-form").addEventListener("submit", useKey);
    $("key-forget").addEventListener("click", forgetKey);
    $("fill-text").addEventListener("input", () => {
      shown.exampleTouched = true;
    });
    refreshInfo();
    setInterval(() => {
      if (!document.hidden && !shown.keyNeeded) refreshInfo();
    }, POLL_MS);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && !shown.keyNeeded) refreshInfo();
    });
  }

  start();
})();
