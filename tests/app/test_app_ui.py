"""The page at ``/`` without a browser: what is served, with which headers, and the off switch.

Checks the files themselves (no inline script or style, no outside URL, a label on every
control, only public API paths called, the sparse, rerank and API-key elements in place, the key
kept in sessionStorage only), the Content-Security-Policy on the page and its assets and its
absence from API responses, the page staying open when API keys guard the API, that the UI routes
never appear in the OpenAPI schema, and ``ui = false`` (``BERT_SERVE_UI=false``, ``--no-ui``)
making them 404. No model is loaded: the
lifespan is not entered, so these tests take milliseconds. What a person sees in a browser:
tests/app/test_app_ui_browser.py.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from app_testing import serve_config
from fastapi.testclient import TestClient

from app.cli import load_config
from app.config import ServeConfig
from app.main import create_app
from app.routes.ui import ASSETS, STATIC

PUBLIC_API = {"/info", "/fill-mask", "/embed", "/embed_sparse", "/decode", "/rerank", "/tokenize"}
API_KEY = "ui-static-key-0123456789"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    # No `with`: the lifespan (model loading) never runs; the routes answer all the same.
    return TestClient(create_app(serve_config(tmp_path_factory.mktemp("unused"))))


class _Page(HTMLParser):
    """The tags of index.html with their attributes, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _page_tags() -> list[tuple[str, dict[str, str | None]]]:
    parser = _Page()
    parser.feed((STATIC / "index.html").read_text(encoding="utf-8"))
    return parser.tags


def test_page_and_assets_carry_a_strict_csp(client):
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    linked = [a.get("src") or a.get("href") for t, a in _page_tags() if t in ("script", "link")]
    assert sorted(linked) == sorted(f"/ui/{name}" for name in ASSETS)
    for response in [r, *(client.get(path) for path in linked)]:
        assert response.status_code == 200, response.url
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "unsafe" not in csp
        assert "script-src 'self'" in csp and "style-src 'self'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
    head = client.head("/")
    assert (
        head.status_code == 200
        and head.content == b""
        and "content-security-policy" in head.headers
    )
    assert client.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/app.css").headers["content-type"].startswith("text/css")


def test_assets_revalidate_with_etag(client):
    first = client.get("/ui/app.js")
    again = client.get("/ui/app.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["content-security-policy"] == first.headers["content-security-policy"]


@pytest.mark.parametrize("path", ["/ui/index.html", "/ui/ui.py", "/ui/..%2Fmain.py", "/ui/"])
def test_only_listed_assets_are_served(client, path):
    r = client.get(path)
    assert r.status_code == 404
    assert r.json()["error_type"] == "NotFound"


def test_api_responses_carry_no_ui_headers(client):
    for r in (client.get("/info"), client.post("/fill-mask", json={"inputs": "[MASK]"})):
        assert "content-security-policy" not in r.headers, r.url


def test_no_inline_code_and_no_outside_resource():
    for tag, attrs in _page_tags():
        assert tag != "style", "inline <style>"
        assert "style" not in attrs, f"style attribute on <{tag}>"
        assert not any(a.startswith("on") for a in attrs), f"inline handler on <{tag}>"
        if tag == "script":
            assert attrs.get("src"), "inline <script>"
        for key in ("src", "href", "action"):
            value = attrs.get(key)
            assert value is None or value.startswith("/"), f"<{tag} {key}={value}>"
    for name in ("index.html", "app.js", "app.css"):
        text = (STATIC / name).read_text(encoding="utf-8")
        assert not re.search(r"https?://|url\(|@import", text), name
    svg = (STATIC / "favicon.svg").read_text(encoding="utf-8")
    assert re.findall(r"https?://[^\"]*", svg) == ["http://www.w3.org/2000/svg"]  # a namespace


def test_script_calls_only_the_public_api():
    script = (STATIC / "app.js").read_text(encoding="utf-8")
    called = set(re.findall(r"api\(\"(/[^\"]*)\"", script))
    assert called == PUBLIC_API


def test_every_control_has_a_label():
    tags = _page_tags()
    labelled = {a["for"] for t, a in tags if t == "label"}
    controls = [a for t, a in tags if t in ("input", "textarea", "select")]
    assert len(controls) == 9
    for attrs in controls:
        assert attrs.get("id") in labelled or attrs.get("aria-label"), attrs


def _by_id(tags, id_):
    (attrs,) = [a for _, a in tags if a.get("id") == id_]
    return attrs


def test_sparse_rerank_and_key_elements_are_in_place():
    tags = _page_tags()
    for panel, capability, fields in (
        ("sparse-panel", "sparse", ["sparse-text"]),
        ("rerank-panel", "rerank", ["rerank-query", "rerank-docs"]),
    ):
        attrs = _by_id(tags, panel)
        # Hidden until /info says the model can do it, and hidden again when it cannot.
        assert attrs["data-capability"] == capability
        assert "hidden" in attrs and "data-optional" in attrs
        for field in fields:
            _by_id(tags, field)
    # The core panels are never hidden, only disabled with the reason.
    for panel in ("fill-panel", "sim-panel", "tok-panel"):
        assert "data-optional" not in _by_id(tags, panel) and "hidden" not in _by_id(tags, panel)
    assert "hidden" in _by_id(tags, "key-form") and "hidden" in _by_id(tags, "key-set")
    key = _by_id(tags, "key-input")
    assert key["type"] == "password" and key["autocomplete"] == "off"


def test_api_key_is_kept_in_session_storage_only():
    script = (STATIC / "app.js").read_text(encoding="utf-8")
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("//"))
    assert "sessionStorage.setItem(KEY_STORE" in code
    assert "authorization = `Bearer ${key}`" in code
    # Never where it would outlive the tab or leak into history, logs and Referer headers.
    for where in ("localStorage", "document.cookie", "location", "history.", "URLSearchParams"):
        assert where not in code, where


def test_page_stays_open_when_api_keys_guard_the_api(tmp_path):
    client = TestClient(create_app(serve_config(tmp_path, api_key=API_KEY)))
    for path in ("/", *(f"/ui/{name}" for name in ASSETS)):
        assert client.get(path).status_code == 200, path
    r = client.get("/info")
    assert r.status_code == 401 and r.json()["error_type"] == "Unauthorized"
    assert client.post("/rerank", json={"query": "q", "texts": ["a"]}).status_code == 401
    assert client.post("/embed_sparse", json={"inputs": "a"}).status_code == 401
    assert client.post("/decode", json={"ids": [[1]]}).status_code == 401


def test_ui_routes_are_never_in_the_openapi_schema(client, tmp_path):
    on = client.get("/openapi.json").json()
    off_app = create_app(serve_config(tmp_path, ui=False))
    off = TestClient(off_app).get("/openapi.json").json()
    assert on == off
    assert not any(p.startswith("/ui") for p in on["paths"])
    # "/" is in the schema for the API's POST (the Inference API root route), never the page.
    assert set(on["paths"].get("/", {})) <= {"post"}


def test_ui_off_answers_404(tmp_path):
    client = TestClient(create_app(serve_config(tmp_path, ui=False)))
    for path in ("/ui/app.js", "/ui/app.css"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.json() == {"error": "Not Found", "error_type": "NotFound"}
        assert "content-security-policy" not in r.headers
    # "/" itself exists for the API's POST (the Inference API root route): GET is 405, no page.
    r = client.get("/")
    assert r.status_code == 405
    assert r.json()["error_type"] == "MethodNotAllowed"
    assert "content-security-policy" not in r.headers


def test_ui_setting_from_env_and_cli(monkeypatch):
    monkeypatch.delenv("BERT_SERVE_UI", raising=False)
    assert ServeConfig.load(checkpoint="x").ui is True
    monkeypatch.setenv("BERT_SERVE_UI", "false")
    assert ServeConfig.load(checkpoint="x").ui is False
    assert load_config(["--checkpoint", "x", "--ui"]).ui is True  # a flag beats the env
    monkeypatch.delenv("BERT_SERVE_UI")
    assert load_config(["--checkpoint", "x", "--no-ui"]).ui is False
