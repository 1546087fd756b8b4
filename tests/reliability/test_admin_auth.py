"""Admin API authentication: off (404) without a token; 401 for a missing or wrong token; the
decision is made by a constant-time compare; tokens never reach logs or responses.

"Constant-time" is proved structurally, not by timing (too noisy on a shared machine):
``hmac.compare_digest`` (which ``secrets.compare_digest`` is) is replaced by a recorder, which
must see exactly one call per admin request, always two 32-byte SHA-256 digests (so the length of
a guess changes nothing), never the raw token; and forcing its answer must force the outcome, so
no other comparison decides. Logs are captured at DEBUG through a successful reload with the
token, a failed reload and refused attempts, in-process and from a real ``bert-serve`` process
(uvicorn's own logging included); neither the token, nor either half of it, nor any wrong token
sent may appear.

Deliberately not here: hostile checkpoints on reload (test_hostile_checkpoints.py) and token
configuration parsing (tests/app/test_app_config.py).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets

import httpx
import pytest
from app_testing import build_checkpoint, error_of, serve_config
from fastapi.testclient import TestClient
from gating import tally
from helpers import ServeProcess

from app.main import create_app

TOKEN = secrets.token_urlsafe(24)  # fresh per run: a match in a log cannot be a coincidence
# Near misses a client might send; each would reveal (most of) the token if it were logged.
WRONG = [
    TOKEN + "x",
    TOKEN[:-1],
    TOKEN.swapcase(),
    secrets.token_urlsafe(24),
    "short",
]


def _secrets_in(text: str) -> list[str]:
    """The secrets (token, its halves, every wrong token sent) that occur in ``text``."""
    half = len(TOKEN) // 2
    needles = [TOKEN, TOKEN[:half], TOKEN[half:], *(w for w in WRONG if len(w) >= 16)]
    return [n for n in needles if n in text]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("admin")
    models = base / "models"
    build_checkpoint(models / "a", seed=1)
    build_checkpoint(models / "b", seed=2)
    token_file = base / "token"
    token_file.write_text(TOKEN + "\n")
    return models, token_file


def _client(root, *, token: bool = True) -> TestClient:
    models, token_file = root
    extra = {"admin_token_file": token_file} if token else {}
    return TestClient(create_app(serve_config(models / "a", models_root=models, **extra)))


def _reload(client, name: str, authorization: str | None):
    headers = {} if authorization is None else {"Authorization": authorization}
    return client.post("/admin/reload", json={"checkpoint": name}, headers=headers)


def _version(client) -> str:
    return client.get("/info").json()["model"]["version"]


# Every way a request can fail authentication: (Authorization header or None, why).
REFUSED = [
    (None, "no header"),
    ("", "empty header"),
    ("Bearer", "scheme only"),
    ("Bearer ", "empty token"),
    (TOKEN, "no scheme"),
    (f"Basic {TOKEN}", "wrong scheme"),
    (f"Token {TOKEN}", "wrong scheme"),
    *((f"Bearer {w}", "wrong token") for w in WRONG),
]
# HTTP clients refuse to send a header value with trailing whitespace.
REFUSED_ON_THE_WIRE = [(a, why) for a, why in REFUSED if a is None or a == a.strip()]


def test_admin_api_is_off_without_a_token(root, figures):
    with _client(root, token=False) as client:
        before = _version(client)
        assert client.get("/info").json()["admin_api"] is False
        attempts = [None, f"Bearer {TOKEN}", "Bearer anything-at-all-0123456789"]
        answers = [_reload(client, "b", authorization) for authorization in attempts]
        for r in answers:
            error_of(r, 404, "NotFound")
            assert "www-authenticate" not in r.headers  # nothing hints that auth would help
        # Not mounted at all: other methods are 404 too (not 405), and the schema hides it.
        error_of(client.get("/admin/reload"), 404, "NotFound")
        assert not any(
            path.startswith("/admin") for path in client.get("/openapi.json").json()["paths"]
        )
        assert _version(client) == before
    figures.record(**tally(len(attempts), answers, rejected={404}))


@pytest.fixture
def compare_calls(monkeypatch):
    """Record every ``compare_digest`` call (hmac's and secrets', the same function)."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a, b):
        calls.append((bytes(a), bytes(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    monkeypatch.setattr(secrets, "compare_digest", recording)
    return calls


def test_missing_or_wrong_token_is_401_via_one_constant_time_compare(root, compare_calls, figures):
    with _client(root) as client:
        before = _version(client)
        answers = []
        for authorization, why in REFUSED:
            answers.append(_reload(client, "b", authorization))
            error_of(answers[-1], 401, "Unauthorized")
            assert answers[-1].headers["www-authenticate"] == "Bearer", why
        # Authentication comes before the body is parsed: a broken body is still just 401.
        headers = {"Authorization": "Bearer nope"}
        answers.append(client.post("/admin/reload", content=b"{", headers=headers))
        error_of(answers[-1], 401, "Unauthorized")
        refused = len(answers)
        assert _version(client) == before
        assert len(compare_calls) == refused  # one compare per request, whatever was sent

        # The scheme is case-insensitive (RFC 7235); the token is what matters.
        r = _reload(client, "b", f"bearer {TOKEN}")
        answers.append(r)
        assert r.status_code == 200, r.text
        assert _version(client) == r.json()["model"] != before
        assert len(compare_calls) == refused + 1

    expected_digest = hashlib.sha256(TOKEN.encode()).digest()
    for a, b in compare_calls:
        assert len(a) == len(b) == 32  # digests: the guess's length never reaches the compare
        assert TOKEN.encode() not in (a, b)
        assert expected_digest in (a, b)
    figures.record(**tally(refused + 1, answers, rejected={401}), compares=len(compare_calls))


def test_compare_digest_alone_decides(root, monkeypatch):
    """Forcing compare_digest's answer forces the outcome: no other comparison accepts or
    refuses a token (a wrong one gets past auth, to the checkpoint lookup's 404)."""
    with _client(root) as client:
        before = _version(client)
        monkeypatch.setattr(hmac, "compare_digest", lambda a, b: False)
        error_of(_reload(client, "b", f"Bearer {TOKEN}"), 401, "Unauthorized")
        monkeypatch.setattr(hmac, "compare_digest", lambda a, b: True)
        r = _reload(client, "no-such-checkpoint", "Bearer definitely-not-the-token")
        assert "no-such-checkpoint" in error_of(r, 404, "NotFound")
        # The scheme check is separate and not secret: still 401 without "Bearer".
        error_of(_reload(client, "b", "Basic definitely-not-the-token"), 401, "Unauthorized")
        assert _version(client) == before


def test_tokens_never_in_logs_or_responses(root, caplog, figures):
    caplog.set_level(logging.DEBUG)  # every logger, every level
    bodies = []
    with _client(root) as client:
        for authorization, _ in REFUSED:
            bodies.append(_reload(client, "b", authorization))
        bodies.append(_reload(client, "b", f"Bearer {TOKEN}"))  # a reload with the token
        assert bodies[-1].status_code == 200
        bodies.append(_reload(client, "no-such-checkpoint", f"Bearer {TOKEN}"))  # a failed one
        assert bodies[-1].status_code == 404
        bodies += [client.get(p) for p in ("/info", "/metrics", "/openapi.json", "/health")]
    messages = [r.getMessage() for r in caplog.records]
    # The logs are not empty: the refusals, the swap and the failed reload are all there.
    refusals = [m for m in messages if m.startswith("admin: refused")]
    assert len(refusals) == len(REFUSED)
    assert any("swapped model" in m for m in messages)
    assert any("no-such-checkpoint" in m for m in messages)
    assert _secrets_in(caplog.text) == []
    assert _secrets_in("\n".join(messages)) == []
    for r in bodies:
        assert _secrets_in(r.text) == [] and _secrets_in(str(r.headers)) == []
    figures.record(
        **tally(len(bodies), bodies, rejected={401, 404}),
        log_records=len(messages),
        leaked=len(_secrets_in(caplog.text)),
    )


@pytest.mark.long
def test_tokens_never_in_a_real_server_log_at_debug(root, tmp_path, figures):
    models, token_file = root
    server = ServeProcess(
        tmp_path / "serve.log",
        checkpoint=models / "a",
        models_root=models,
        admin_token_file=token_file,
        log_level="debug",
    )
    with server:
        server.wait_ready()
        url = f"{server.url}/admin/reload"
        statuses = []
        with httpx.Client(timeout=30) as http:
            for authorization, _ in REFUSED_ON_THE_WIRE:
                headers = {} if authorization is None else {"Authorization": authorization}
                statuses.append(
                    http.post(url, json={"checkpoint": "b"}, headers=headers).status_code
                )
            auth = {"Authorization": f"Bearer {TOKEN}"}
            statuses.append(http.post(url, json={"checkpoint": "b"}, headers=auth).status_code)
        server.proc.terminate()
        assert server.proc.wait(timeout=30) == 0
    log = server.output()
    assert statuses == [401] * len(REFUSED_ON_THE_WIRE) + [200]
    assert log.count("admin: refused") == len(REFUSED_ON_THE_WIRE)
    assert "swapped model" in log and '"POST /admin/reload HTTP/1.1" 401' in log  # uvicorn's
    assert _secrets_in(log) == []
    figures.record(
        **tally(len(REFUSED_ON_THE_WIRE) + 1, statuses, rejected={401}),
        log_bytes=len(log),
        leaked=len(_secrets_in(log)),
    )
