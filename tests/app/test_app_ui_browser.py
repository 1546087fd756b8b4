"""The page at ``/`` in a real browser: Debian's headless Chromium, driven by Selenium, against the
real server (uvicorn in a thread) on tiny seeded checkpoints with hot-swap enabled.

Asserts what a person would see, checked against what the API answers for the same input: bars
whose widths follow the scores, one block per ``[MASK]``, the similarity grid's diagonal at 1.00,
token highlights on exactly the characters /tokenize reports, the API's own error message on a bad
input, the model panel following a hot-swap (through X-Model-Version and through polling), the
fill-mask panel disabled when /info says the model cannot fill masks, a phone-sized window without
sideways scrolling, and that the page requests nothing but its own server and trips no CSP rule.

One browser and one server for the module. Screenshots of each panel go to a temporary directory,
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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The live server on checkpoint ``a``, with ``b`` beside it for hot-swaps."""
    models = tmp_path_factory.mktemp("ui-models")
    build_checkpoint(models / "a", seed=1)
    build_checkpoint(models / "b", seed=2)
    token_file = models.parent / "ui-token"
    token_file.write_text(TOKEN)
    config = serve_config(models / "a", models_root=models, admin_token_file=token_file)
    app = create_app(config)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as api:
        yield url, api, app.state.serve


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
    assert _field(page, "capabilities") == "fill-mask, embeddings, tokenize"
    assert page.find_element(By.ID, "status").text == f"Serving {info['version']}"
    assert not page.find_element(By.ID, "model-note").is_displayed()


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
    assert [u for u in sent + timed if not u.startswith(url + "/")] == []
    console = [e["message"] for e in page.get_log("browser")]
    assert not [m for m in console if "Content Security Policy" in m], console
