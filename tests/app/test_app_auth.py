"""API keys and CORS: with keys configured every inference route needs ``Authorization: Bearer
<key>`` (401 in the one error shape otherwise) while probes, metrics and docs stay open; a key
file rotates without a restart; keys never reach logs or responses; the admin token is a separate
credential; CORS headers only for the configured origins, preflights answered before
authentication.
"""

from __future__ import annotations

import logging
import os

import pytest
from app_testing import build_checkpoint, error_of, serve_config
from fastapi.testclient import TestClient

from app import auth
from app.config import ConfigFileError
from app.main import create_app

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-fedcba9876543210"
ADMIN = "admin-token-0123456789"
INFERENCE = (
    ("/fill-mask", {"inputs": "a [MASK] dog"}),
    ("/embed", {"inputs": "a dog"}),
    ("/v1/embeddings", {"input": "a dog"}),
    ("/tokenize", {"inputs": "a dog"}),
    ("/", {"inputs": "a [MASK] dog"}),
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("auth") / "tiny", seed=2)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_without_keys_the_api_is_open(checkpoint):
    with TestClient(create_app(serve_config(checkpoint))) as client:
        assert client.get("/info").json()["api_keys"] is False
        for path, body in INFERENCE:
            assert client.post(path, json=body).status_code == 200, path


def test_a_key_protects_every_inference_route_and_nothing_else(checkpoint, caplog):
    config = serve_config(checkpoint, api_key=KEY_A)
    with caplog.at_level(logging.DEBUG), TestClient(create_app(config)) as client:
        for path, body in INFERENCE:
            for headers in ({}, _bearer(KEY_B), {"Authorization": f"Basic {KEY_A}"}, _bearer("")):
                r = client.post(path, json=body, headers=headers)
                error_of(r, 401, "Unauthorized")
                assert r.headers["www-authenticate"] == "Bearer"
            r = client.post(path, json=body, headers=_bearer(KEY_A))
            assert r.status_code == 200, (path, r.text)
        # Authentication comes before validation: an anonymous bad body learns nothing.
        error_of(client.post("/embed", json={"bad": 1}), 401, "Unauthorized")
        error_of(client.get("/info"), 401, "Unauthorized")
        assert client.get("/info", headers=_bearer(KEY_A)).json()["api_keys"] is True
        for path in ("/health", "/live", "/metrics", "/docs", "/openapi.json", "/"):
            assert client.get(path).status_code == 200, path
    assert KEY_A not in caplog.text and KEY_B not in caplog.text
    assert "api: refused POST /embed" in caplog.text and "wrong API key" in caplog.text


def test_the_key_file_rotates_without_a_restart(checkpoint, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(auth, "RECHECK_S", 0.0)
    keys = tmp_path / "keys"
    keys.write_text(f"# the CI key\n{KEY_A}\n\n{KEY_B}\n")
    with TestClient(create_app(serve_config(checkpoint, api_key_file=keys))) as client:
        for key in (KEY_A, KEY_B):
            assert client.post("/embed", json={"inputs": "x"}, headers=_bearer(key)).is_success
        keys.write_text(f"{KEY_B}\n")  # KEY_A retired
        os.utime(keys, (1, 1))  # a new modification time even within the clock's resolution
        error_of(
            client.post("/embed", json={"inputs": "x"}, headers=_bearer(KEY_A)), 401, "Unauthorized"
        )
        assert client.post("/embed", json={"inputs": "x"}, headers=_bearer(KEY_B)).is_success
        # A half-written (empty) file keeps the keys last read rather than locking everyone out.
        keys.write_text("")
        os.utime(keys, (2, 2))
        with caplog.at_level(logging.WARNING, logger="app.auth"):
            assert client.post("/embed", json={"inputs": "x"}, headers=_bearer(KEY_B)).is_success
        assert "holds no API key" in caplog.text and KEY_B not in caplog.text


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"api_key": "short"}, "at least 16 characters"),
        ({"api_key_file": "missing"}, "cannot use api_key_file"),
        ({"api_key_file": "empty"}, "holds no API key"),
        ({"api_key": ADMIN, "admin_token": ADMIN}, "must differ from every API key"),
    ],
)
def test_bad_keys_fail_at_startup(checkpoint, tmp_path, settings, message):
    (tmp_path / "empty").write_text("# nothing yet\n")
    settings = {k: (tmp_path / v if k == "api_key_file" else v) for k, v in settings.items()}
    with pytest.raises(ConfigFileError, match=message):
        create_app(serve_config(checkpoint, **settings))


def test_the_admin_token_and_api_keys_are_separate(checkpoint, tmp_path):
    config = serve_config(
        checkpoint, api_key=KEY_A, admin_token=ADMIN, models_root=checkpoint.parent
    )
    with TestClient(create_app(config)) as client:
        body = {"checkpoint": checkpoint.name}
        error_of(
            client.post("/admin/reload", json=body, headers=_bearer(KEY_A)), 401, "Unauthorized"
        )
        error_of(
            client.post("/embed", json={"inputs": "x"}, headers=_bearer(ADMIN)), 401, "Unauthorized"
        )
        assert client.post("/admin/reload", json=body, headers=_bearer(ADMIN)).is_success


def test_cors_only_for_the_configured_origins(checkpoint):
    with TestClient(create_app(serve_config(checkpoint))) as client:
        r = client.post("/embed", json={"inputs": "x"}, headers={"Origin": "https://a.example"})
        assert "access-control-allow-origin" not in r.headers
    config = serve_config(
        checkpoint, api_key=KEY_A, cors_allow_origins="https://a.example, https://b.example"
    )
    assert config.cors_allow_origins == ["https://a.example", "https://b.example"]
    with TestClient(create_app(config)) as client:
        preflight = {
            "Origin": "https://a.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        r = client.options("/embed", headers=preflight)  # no key: answered before auth
        assert (
            r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://a.example"
        )
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = client.options("/embed", headers={**preflight, "Origin": "https://evil.example"})
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
        r = client.post(
            "/embed",
            json={"inputs": "x"},
            headers={"Origin": "https://b.example", **_bearer(KEY_A)},
        )
        assert (
            r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://b.example"
        )
        exposed = r.headers["access-control-expose-headers"].lower()
        assert "x-model-version" in exposed and "x-model-precision" in exposed
        r = client.post("/embed", json={"inputs": "x"}, headers={"Origin": "https://b.example"})
        error_of(r, 401, "Unauthorized")  # errors carry CORS headers too: the page can read them
        assert r.headers["access-control-allow-origin"] == "https://b.example"
    with pytest.raises(ValueError, match="is not an origin"):
        serve_config(checkpoint, cors_allow_origins="a.example")
