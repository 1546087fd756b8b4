"""The page at ``/`` in a real browser: Debian's headless Chromium, driven by Selenium, against the
real server (uvicorn in a thread) on tiny seeded checkpoints with hot-swap enabled.

Asserts what a person would see, checked against what the API answers for the same input: bars
whose widths follow the scores, one block per ``[MASK]``, the similarity grid's diagonal at 1.00,
token highlights on exactly the characters /tokenize reports, sparse terms with /embed_sparse's
weights and /decode's tokens, a cross-encoder's ranking as /rerank answers it, the API's own error
message on a bad input, the model panel following a hot-swap (through X-Model-Version and through
polling) and the sparse and rerank panels coming and going with it, the fill-mask panel disabled
when /info says the model cannot fill masks, the API-key prompt on a server with a key (401 first,
a working page after the key, kept in sessionStorage only), a phone-sized window without sideways
scrolling, and that the page requests nothing but its own server and trips no CSP rule.

One browser and one server for the module (an MLM, ``a``, with another MLM ``b`` and rerankers
``r`` (sigmoid scores) and ``r-logits`` (raw logits) beside it for hot-swaps), and one more server
with an API key for the key's test. Screenshots of each panel go to a temporary directory,
or to ``$BERT_UI_SCREENSHOTS`` when set. Skipped, with the install command, where Chromium,
chromedriver or selenium is missing. Headers, files and the off switch: tests/app/test_app_ui.py.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import httpx
import pytest
from app_testing import build_checkpoint, serve_config
from ui_browser import browser_missing, live_server, open_page, start_chromium, submit, wait

from app.engine import Engine
from app.main import create_app

if reason := browser_missing():
    pytest.skip(reason, allow_module_level=True)

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

TOKEN = "ui-admin-token-0123456789abcdef"
API_KEY = "ui-api-key-0123456789abcdef"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The live server on checkpoint ``a``, with ``b`` beside it for hot-swaps."""
    models = tmp_path_factory.mktemp("ui-models")
    build_checkpoint(models / "a", seed=1)
    build_checkpoint(models / "b", seed=2)
    build_checkpoint(models / "r", seed=3, labels=("score",))  # one label: a cross-encoder
    # The same kind, saved as a CrossEncoder whose scores are its logits (activation Identity).
    logits = build_checkpoint(models / "r-logits", seed=5, labels=("score",))
    config = json.loads((logits / "config.json").read_text())
    config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.linear.Identity"}
    (logits / "config.json").write_text(json.dumps(config))
    token_file = models.parent / "ui-token"
    token_file.write_text(TOKEN)
    config = serve_config(models / "a", models_root=models, admin_token_file=token_file)
    app = create_app(config)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as api:
        yield url, api, app.state.serve


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    """A live server whose inference API and /info need ``API_KEY``."""
    checkpoint = build_checkpoint(tmp_path_factory.mktemp("ui-keyed") / "k", seed=4)
    app = create_app(serve_config(checkpoint, api_key=API_KEY))
    with live_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    browser = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    configured = os.environ.get("BERT_UI_SCREENSHOTS")
    out = Path(configured) if configured else tmp_path_factory.mktemp("ui-screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def page(server, driver):
    url, _, _ = server
    open_page(driver, url)
    return driver


def _css(scope, selector):
    return scope.find_elements(By.CSS_SELECTOR, selector)


def _field(driver, name):
    # Read in one script: the model panel is rebuilt on every /info poll, so an element found
    # first and read after could be stale.
    return driver.execute_script(
        "const e = document.querySelector(`#model-info [data-field=${arguments[0]}]`);"
        "return e ? e.textContent : null;",
        name,
    )


def _error(panel):
    box = panel.find_element(By.CSS_SELECTOR, ".error")
    return box.text if box.is_displayed() else None


def _reload(api, name):
    r = api.post(
        "/admin/reload", json={"checkpoint": name}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert r.status_code == 200, r.text
    return r.json()["model"]


@pytest.fixture
def reranker(server):
    """The live server swapped to the cross-encoder ``r`` for one test, then back to ``a``."""
    _, api, _ = server
    v_a = api.get("/info").json()["model"]["version"]
    yield _reload(api, "r")
    assert _reload(api, "a") == v_a


def _shown(driver, id_):
    return driver.find_element(By.ID, id_).is_displayed()


def _sent(driver, base_url):
    """(path, request headers with lower-case names) of every request the browser sent since the
    last call (Chrome's performance log)."""
    sent = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            request = message["params"]["request"]
            headers = {k.lower(): v for k, v in request["headers"].items()}
            sent.append((request["url"].removeprefix(base_url), headers))
    return sent


def test_model_panel_shows_info(page, server):
    _, api, _ = server
    info = api.get("/info").json()["model"]
    cfg = info["config"]
    assert _field(page, "version") == info["version"]
    assert _field(page, "name") == info["name"]
    assert _field(page, "sha256") == info["sha256"][:12] + "…"
    assert _field(page, "shape") == (
        f"{cfg['num_hidden_layers']} layers · hidden {cfg['hidden_size']} · "
        f"{cfg['num_attention_heads']} heads · vocab {info['vocab_size']}"
    )
    assert _field(page, "capabilities") == "fill-mask, embeddings, sparse, tokenize"
    assert page.find_element(By.ID, "status").text == f"Serving {info['version']}"
    assert not page.find_element(By.ID, "model-note").is_displayed()
    # An MLM has sparse vectors but does not rerank; a server without keys asks for none.
    assert _shown(page, "sparse-panel") and not _shown(page, "rerank-panel")
    assert not _shown(page, "key-form") and not _shown(page, "key-set")


def test_fill_mask_bars_follow_the_scores(page, server, shots):
    _, api, _ = server
    text = "the dog [MASK] here ."
    page.find_element(By.ID, "fill-top-k").clear()
    page.find_element(By.ID, "fill-top-k").send_keys("4")
    panel = submit(page, "fill-panel", "fill-text", text, Keys.ENTER)
    expected = api.post("/fill-mask", json={"inputs": text, "top_k": 4}).json()
    (block,) = _css(panel, ".mask-block")
    rows = _css(block, ".candidate")
    assert len(rows) == 4
    for row, want in zip(rows, expected["predictions"][0][0], strict=True):
        assert row.find_element(By.CSS_SELECTOR, ".token").text == want["token_str"]
        assert row.get_attribute("title") == want["sequence"]  # the filled sentence on hover
        assert float(row.find_element(By.CSS_SELECTOR, ".score").text) == pytest.approx(
            want["score"], abs=5e-4
        )
        bar, track = (row.find_element(By.CSS_SELECTOR, s) for s in (".bar", ".track"))
        width = page.execute_script("return arguments[0].getBoundingClientRect().width", bar)
        inner = page.execute_script("return arguments[0].clientWidth", track)
        assert width == pytest.approx(want["score"] * inner, abs=1.0)
    ActionChains(page).move_to_element(rows[1]).perform()
    preview = block.find_element(By.CSS_SELECTOR, ".sequence").text
    assert preview == expected["predictions"][0][0][1]["sequence"]
    assert re.search(r"\d+ ms", panel.find_element(By.CSS_SELECTOR, ".meta").text)
    panel.screenshot(str(shots / "fill-mask.png"))


def test_fill_mask_one_block_per_mask_and_targets(page, server):
    _, api, _ = server
    text = "a [MASK] concept formed by extracting [MASK] features"
    panel = submit(page, "fill-panel", "fill-text", text, Keys.ENTER)
    blocks = _css(panel, ".mask-block")
    assert [b.find_element(By.TAG_NAME, "h3").text for b in blocks] == [
        "[MASK] 1 of 2",
        "[MASK] 2 of 2",
    ]
    assert all(len(_css(b, ".candidate")) == 5 for b in blocks)
    page.find_element(By.ID, "fill-targets").send_keys("time, the")
    panel = submit(page, "fill-panel", "fill-text", "the [MASK] is here .", Keys.ENTER)
    want = api.post(
        "/fill-mask", json={"inputs": "the [MASK] is here .", "targets": ["time", "the"]}
    ).json()["predictions"][0][0]
    tokens = [t.text for t in _css(panel, ".candidate .token")]
    assert tokens == [c["token_str"] for c in want] and sorted(tokens) == ["the", "time"]


@pytest.mark.parametrize(
    ("text", "top_k"),
    [("no mask here", "5"), ("the [MASK] .", "0"), ("the [MASK] .", "1000")],
)
def test_api_errors_show_the_api_message(page, server, text, top_k):
    _, api, _ = server
    r = api.post("/fill-mask", json={"inputs": text, "top_k": int(top_k)})
    assert r.status_code == 422
    page.find_element(By.ID, "fill-top-k").clear()
    page.find_element(By.ID, "fill-top-k").send_keys(top_k)
    panel = submit(page, "fill-panel", "fill-text", text, Keys.ENTER)
    assert _error(panel) == f"Error 422: {r.json()['error']}"
    assert not _css(panel, ".result > *")
    # The page still works after an error.
    page.find_element(By.ID, "fill-top-k").clear()
    panel = submit(page, "fill-panel", "fill-text", "the [MASK] .", Keys.ENTER)
    assert _error(panel) is None and _css(panel, ".mask-block")


@pytest.mark.parametrize(
    ("fault", "status", "message"),
    [
        ("overloaded", 429, r"the queue is full \(0 requests waiting\) \(retry after \d+ s\)"),
        ("draining", 503, r"the server is shutting down"),
    ],
)
def test_overload_and_unavailable_show_the_api_message(
    page, server, monkeypatch, fault, status, message
):
    _, _, state = server
    # The real refusals: a queue that holds nothing, a server that is draining.
    if fault == "overloaded":
        monkeypatch.setattr(state.batcher, "max_queue", 0)
    else:
        monkeypatch.setattr(state, "draining", True)
    panel = submit(page, "fill-panel", "fill-text", None, Keys.ENTER)
    assert re.fullmatch(f"Error {status}: {message}", _error(panel))


def test_similarity_grid(page, server, shots):
    _, api, _ = server
    sentences = ["a small dog", "a little puppy", "a python function", "an entity"]
    panel = submit(page, "sim-panel", "sim-text", "\n".join(sentences), Keys.CONTROL + Keys.ENTER)
    vectors = api.post("/embed", json={"inputs": sentences, "normalize": True}).json()
    rows = _css(panel, "table.grid tbody tr")
    assert len(rows) == 4
    colours = {}
    for i, row in enumerate(rows):
        cells = _css(row, "td")
        assert len(cells) == 4
        for j, cell in enumerate(cells):
            want = sum(x * y for x, y in zip(vectors[i], vectors[j], strict=True))
            assert cell.text == f"{want:.2f}" or (cell.text == "0.00" and abs(want) < 0.005)
            colours[i, j] = cell.value_of_css_property("background-color")
        assert cells[i].text == "1.00"
    assert len({colours[i, i] for i in range(4)}) == 1  # the diagonal: one colour
    assert colours[0, 0] != colours[0, 2]  # a different value, a different colour
    assert [li.text for li in _css(panel, ".legend li")] == sentences
    panel.screenshot(str(shots / "similarity.png"))
    # One sentence is not a comparison: said on the page, no request sent.
    panel = submit(page, "sim-panel", "sim-text", "alone", Keys.CONTROL + Keys.ENTER)
    assert _error(panel) == "Enter 2 to 8 sentences, one per line (got 1)."


def test_token_highlights_match_tokenize(page, server, shots):
    _, api, _ = server
    text = "Héllo wörld! Tokenizers split 😀 words."  # accents, an emoji beyond UTF-16's BMP
    panel = submit(page, "tok-panel", "tok-text", text, Keys.ENTER)
    tokens = api.post("/tokenize", json={"inputs": text}).json()[0]
    chips = _css(panel, ".chip")
    assert [c.find_element(By.TAG_NAME, "code").text for c in chips] == [t["token"] for t in tokens]
    assert [c.find_element(By.TAG_NAME, "small").text for c in chips] == [
        str(t["id"]) for t in tokens
    ]
    source = panel.find_element(By.CSS_SELECTOR, ".source")
    assert page.execute_script("return arguments[0].textContent", source) == text
    marks = _css(source, "mark")
    spans = [t for t in tokens if t["start"] is not None]
    assert [m.get_attribute("textContent") for m in marks] == [t["text"] for t in spans]
    assert [int(m.get_attribute("data-index")) for m in marks] == [
        i for i, t in enumerate(tokens) if t["start"] is not None
    ]
    # Hovering a token's chip highlights its characters.
    target = next(i for i, t in enumerate(tokens) if t["token"].startswith("##"))
    ActionChains(page).move_to_element(chips[target]).perform()
    active = _css(source, "mark.active")
    assert [m.get_attribute("textContent") for m in active] == [tokens[target]["text"]]
    panel.screenshot(str(shots / "tokens.png"))


def test_sparse_terms_are_embed_sparse_weights(page, server, shots):
    url, api, _ = server
    text = "a small dog runs after the ball in the park"
    page.get_log("performance")  # drop what earlier tests logged
    panel = submit(page, "sparse-panel", "sparse-text", text, Keys.ENTER)
    weights = api.post("/embed_sparse", json={"inputs": text}).json()[0]
    top = sorted(weights, key=lambda w: (-w["value"], w["index"]))[:20]
    ids = [[w["index"]] for w in top]
    tokens = [  # at most max_client_batch (8) sequences a call
        token
        for i in range(0, len(ids), 8)
        for token in api.post(
            "/decode", json={"ids": ids[i : i + 8], "skip_special_tokens": False}
        ).json()
    ]
    rows = _css(panel, ".term")
    assert [int(r.get_attribute("data-index")) for r in rows] == [w["index"] for w in top]
    assert [float(r.get_attribute("data-value")) for r in rows] == [w["value"] for w in top]
    assert [r.find_element(By.CSS_SELECTOR, ".token").text for r in rows] == tokens
    assert [r.find_element(By.CSS_SELECTOR, ".score").text for r in rows] == [
        f"{w['value']:.3f}" for w in top
    ]
    vocab = api.get("/info").json()["model"]["vocab_size"]
    meta = panel.find_element(By.CSS_SELECTOR, ".meta").text
    assert f"{len(weights)} of {vocab} dimensions non-zero · top 20 · " in meta
    # Bars relative to the heaviest term.
    widths = page.execute_script(
        "return [...arguments[0].querySelectorAll('.term')].map(r =>"
        " r.querySelector('.bar').getBoundingClientRect().width"
        " / r.querySelector('.track').clientWidth)",
        panel,
    )
    assert widths == pytest.approx([w["value"] / top[0]["value"] for w in top], abs=0.01)
    # Ids become tokens in as few /decode calls as the batch limit allows (20 ids, 8 a call);
    # the same text again decodes nothing: the page keeps the tokens of this model version.
    calls = [path for path, _ in _sent(page, url) if path in ("/embed_sparse", "/decode")]
    assert calls == ["/embed_sparse", *["/decode"] * 3]
    submit(page, "sparse-panel", "sparse-text", None, Keys.ENTER)
    assert [path for path, _ in _sent(page, url) if path == "/decode"] == []
    panel.screenshot(str(shots / "sparse.png"))


def test_rerank_panel_ranks_like_the_api(reranker, page, server, shots):
    _, api, _ = server
    # The cross-encoder cannot fill masks nor give sparse vectors: those panels say so or go.
    assert _field(page, "capabilities") == "embeddings, rerank, tokenize"
    assert _shown(page, "rerank-panel") and not _shown(page, "sparse-panel")
    assert not page.find_element(By.ID, "fill-text").is_enabled()
    query = "how do I copy a list"
    docs = ["list.copy() returns a shallow copy", "the dog sat on the mat", "slicing copies a list"]
    page.find_element(By.ID, "rerank-query").clear()
    page.find_element(By.ID, "rerank-query").send_keys(query)
    # A blank line is not a document.
    text = "\n".join([docs[0], "", *docs[1:]])
    panel = submit(page, "rerank-panel", "rerank-docs", text, Keys.CONTROL + Keys.ENTER)
    want = api.post("/rerank", json={"query": query, "texts": docs, "return_text": True}).json()
    rows = _css(panel, ".ranked")
    assert [int(r.get_attribute("data-index")) for r in rows] == [w["index"] for w in want]
    assert [r.find_element(By.CSS_SELECTOR, ".doc").text for r in rows] == [
        f"doc {w['index'] + 1} {w['text']}" for w in want
    ]
    for row, w in zip(rows, want, strict=True):
        assert float(row.get_attribute("data-score")) == pytest.approx(w["score"], abs=1e-6)
        assert float(row.find_element(By.CSS_SELECTOR, ".score").text) == pytest.approx(
            w["score"], abs=5e-4
        )
        # Sigmoid scores: bars as wide as the score.
        bar, track = (row.find_element(By.CSS_SELECTOR, s) for s in (".bar", ".track"))
        width = page.execute_script("return arguments[0].getBoundingClientRect().width", bar)
        inner = page.execute_script("return arguments[0].clientWidth", track)
        assert width == pytest.approx(w["score"] * inner, abs=1.0)
    assert "3 documents · sigmoid scores · " in panel.find_element(By.CSS_SELECTOR, ".meta").text
    panel.screenshot(str(shots / "rerank.png"))
    # No document at all: the API's own message, as in the other panels.
    r = api.post("/rerank", json={"query": query, "texts": []})
    assert r.status_code == 422
    panel = submit(page, "rerank-panel", "rerank-docs", "\n", Keys.CONTROL + Keys.ENTER)
    assert _error(panel) == f"Error 422: {r.json()['error']}" and not _css(panel, ".result > *")


def test_panels_follow_a_hot_swap_between_mlm_and_reranker(page, server):
    _, api, _ = server
    submit(page, "sparse-panel", "sparse-text", None, Keys.ENTER)
    v_a = _field(page, "version")
    v_r = _reload(api, "r-logits")
    try:
        # Any answer from the new version makes the page refetch /info and redraw its panels.
        submit(page, "tok-panel", "tok-text", "hello", Keys.ENTER)
        wait(page, lambda d: _shown(d, "rerank-panel") and not _shown(d, "sparse-panel"), 3)
        assert _field(page, "version") == v_r
        assert page.find_element(By.CSS_SELECTOR, "#fill-panel .capability-note").is_displayed()
        # Logits are no probabilities: bars span the lowest to the highest score.
        panel = submit(page, "rerank-panel", "rerank-docs", None, Keys.CONTROL + Keys.ENTER)
        query = page.find_element(By.ID, "rerank-query").get_attribute("value")
        docs = page.find_element(By.ID, "rerank-docs").get_attribute("value").split("\n")
        want = api.post("/rerank", json={"query": query, "texts": docs}).json()
        assert api.get("/info").json()["model"]["capabilities"]["score_activation"] == "identity"
        assert "identity scores" in panel.find_element(By.CSS_SELECTOR, ".meta").text
        assert [r.find_element(By.CSS_SELECTOR, ".score").text for r in _css(panel, ".ranked")] == [
            f"{w['score']:.3f}" for w in want
        ]
        widths = page.execute_script(
            "return [...arguments[0].querySelectorAll('.ranked')].map(r =>"
            " r.querySelector('.bar').getBoundingClientRect().width"
            " / r.querySelector('.track').clientWidth)",
            panel,
        )
        high, low = want[0]["score"], want[-1]["score"]
        assert widths == pytest.approx([(w["score"] - low) / (high - low) for w in want], abs=0.01)
    finally:
        assert _reload(api, "a") == v_a
    submit(page, "tok-panel", "tok-text", "hello", Keys.ENTER)
    wait(page, lambda d: _shown(d, "sparse-panel") and not _shown(d, "rerank-panel"), 3)
    assert page.find_element(By.ID, "fill-text").is_enabled()
    # The other model's sparse terms went with it: the panel comes back empty.
    assert not _css(page.find_element(By.ID, "sparse-panel"), ".result > *")


def test_api_key_prompt_then_a_working_page(driver, keyed_server, shots):
    url = keyed_server
    driver.get(url + "/")
    # Without a key: /info is 401, and the page asks for one (no error: nothing was refused).
    wait(driver, lambda d: _shown(d, "key-form"))
    status = driver.find_element(By.ID, "status")
    assert status.text == "This server needs an API key"
    assert _error(driver.find_element(By.ID, "key-form")) is None
    assert _field(driver, "version") is None
    # A wrong key: the API's 401 message, and the page stays locked.
    driver.find_element(By.ID, "key-input").send_keys("not-the-key-0123456789" + Keys.ENTER)
    form = driver.find_element(By.ID, "key-form")
    wait(driver, lambda d: _error(form))
    assert _error(form) == "Error 401: missing or invalid bearer token"
    assert _field(driver, "version") is None
    driver.save_screenshot(str(shots / "api-key.png"))
    # The right key: /info again, with it, and the page works.
    driver.get_log("performance")
    driver.find_element(By.ID, "key-input").clear()
    driver.find_element(By.ID, "key-input").send_keys(API_KEY + Keys.ENTER)
    wait(driver, lambda d: _field(d, "version"))
    assert not _shown(driver, "key-form") and _shown(driver, "key-set")
    assert status.text.startswith("Serving k-")
    panel = submit(driver, "sparse-panel", "sparse-text", None, Keys.ENTER)
    assert _error(panel) is None and _css(panel, ".term")
    sent = [(p, h) for p, h in _sent(driver, url) if not p.startswith("/ui/")]
    assert {p for p, _ in sent} >= {"/info", "/embed_sparse", "/decode"}
    assert all(h.get("authorization") == f"Bearer {API_KEY}" for _, h in sent), sent
    # Kept for this tab only: sessionStorage, not localStorage, not the URL.
    stored = driver.execute_script(
        "return [sessionStorage.getItem('bertserve.api-key'), localStorage.length]"
    )
    assert stored == [API_KEY, 0] and API_KEY not in driver.current_url
    # A reload keeps the key; "Forget key" drops it and the page asks again.
    open_page(driver, url)
    assert not _shown(driver, "key-form")
    driver.find_element(By.ID, "key-forget").click()
    wait(driver, lambda d: _shown(d, "key-form"))
    assert driver.execute_script("return sessionStorage.length") == 0


def test_model_panel_follows_hot_swaps(page, server, shots):
    _, api, _ = server
    v_a = _field(page, "version")
    v_b = _reload(api, "b")
    try:
        # An API answer from another version makes the page refetch /info at once.
        submit(page, "tok-panel", "tok-text", "hello", Keys.ENTER)
        wait(page, lambda d: _field(d, "version") == v_b, timeout=3)
        assert page.find_element(By.ID, "status").text == f"Serving {v_b}"
        assert _field(page, "name") == "b"
        page.find_element(By.ID, "model-panel").screenshot(str(shots / "model.png"))
    finally:
        assert _reload(api, "a") == v_a
    # With no request of its own, the page finds the swap by polling /info.
    wait(page, lambda d: _field(d, "version") == v_a, timeout=15)


def test_model_without_mlm_head_disables_fill_mask(page, server, monkeypatch):
    # No checkpoint lacks an MLM head today; /info saying so is what the page reads.
    info = Engine.info
    monkeypatch.setattr(
        Engine,
        "info",
        lambda self: {**info(self), "capabilities": {"fill_mask": False, "embed": True}},
    )
    url, _, _ = server
    open_page(page, url)
    fill = page.find_element(By.ID, "fill-panel")
    note = fill.find_element(By.CSS_SELECTOR, ".capability-note")
    assert note.is_displayed() and "no masked-language-model head" in note.text
    assert not page.find_element(By.ID, "fill-text").is_enabled()
    assert "no masked-language-model head" in page.find_element(By.ID, "model-note").text
    assert _field(page, "capabilities") == "embeddings, tokenize"
    assert page.find_element(By.ID, "tok-text").is_enabled()


def test_phone_sized_window_and_labels(page, server, shots):
    url, _, _ = server
    size = page.get_window_size()
    page.set_window_size(390, 844)
    try:
        open_page(page, url)
        submit(page, "sim-panel", "sim-text", None, Keys.CONTROL + Keys.ENTER)
        overflow = page.execute_script(
            "const e = document.documentElement; return e.scrollWidth - e.clientWidth"
        )
        assert overflow <= 0  # nothing sticks out sideways
        page.save_screenshot(str(shots / "phone.png"))
    finally:
        page.set_window_size(size["width"], size["height"])
    unlabelled = page.execute_script(
        "return [...document.querySelectorAll('input, textarea, select, button')]"
        ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')"
        " && !(e.tagName === 'BUTTON' && e.textContent.trim())).map(e => e.outerHTML)"
    )
    assert unlabelled == []


def test_requests_only_its_own_server_and_no_csp_violation(page, server):
    url, _, _ = server
    page.get_log("performance")  # drop what earlier tests logged
    page.get_log("browser")
    open_page(page, url)
    submit(page, "fill-panel", "fill-text", None, Keys.ENTER)
    submit(page, "sim-panel", "sim-text", None, Keys.CONTROL + Keys.ENTER)
    submit(page, "tok-panel", "tok-text", None, Keys.ENTER)
    submit(page, "sparse-panel", "sparse-text", None, Keys.ENTER)
    sent = []
    for entry in page.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            sent.append(message["params"]["request"]["url"])
    timed = page.execute_script(
        "return [...performance.getEntriesByType('navigation'),"
        " ...performance.getEntriesByType('resource')].map(e => e.name)"
    )
    paths = {u.removeprefix(url).split("?")[0] for u in sent}
    assert {"/", "/ui/app.js", "/ui/app.css", "/info", "/fill-mask", "/embed", "/tokenize"} <= paths
    assert {"/embed_sparse", "/decode"} <= paths
    assert [u for u in sent + timed if not u.startswith(url + "/")] == []
    console = [e["message"] for e in page.get_log("browser")]
    assert not [m for m in console if "Content Security Policy" in m], console
