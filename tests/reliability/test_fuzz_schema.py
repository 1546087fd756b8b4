"""Schema fuzzing: schemathesis over every operation of the OpenAPI schema, positive and negative.

The app runs in-process (``schemathesis.openapi.from_asgi``) on a tiny seeded MLM checkpoint.
Every operation gets schemathesis' positive cases (data the schema allows) and negative cases
(data it forbids), and every response must: not be a 5xx, carry a status code the schema
documents for that operation, match the documented response schema and content type, reject
negative data with a 4xx, and (errors) be exactly ``{"error", "error_type"}``. Half of the
positive fill-mask cases get a ``[MASK]`` appended so that the computing path (200) is fuzzed
too, not only validation; half of the admin cases carry the admin token so that the body is
fuzzed past authentication. ``/predict`` needs a classifier, which the MLM model is not (400
Unsupported), so a second, smaller run fuzzes the classification routes (``/predict``, ``POST /``)
on a tiny seeded classifier, whose ``/fill-mask`` answers 400 in turn.

The default-suite run sends >= 1000 cases (and >= 300 to the classifier), derandomized so that it
never flakes; the ``long`` run sends 4x more with a fresh random seed each time.

Deliberately not here: overload, deadlines and body-size limits (their own tests pin exact
counts; a fuzzer cannot), and stateful (link-following) testing: the API has no resource links.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

import hypothesis
import pytest
import schemathesis
from app_testing import build_checkpoint, serve_config
from hypothesis import HealthCheck
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app

TOKEN = "fuzz-admin-token-0123456789abcdef"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Operations without parameters or body: there is no negative data to generate for them.
_NO_INPUT = {"/health", "/live", "/info", "/metrics"}
_INFERENCE = (
    "/fill-mask",
    "/embed",
    "/predict",
    "/v1/embeddings",
    "/tokenize",
    "/decode",
    "/embed_all",
    "/embed_sparse",
    "/similarity",
    "/rerank",
    "/v1/rerank",
    "/v2/rerank",
)
# What each model cannot do: those routes may also answer 400 Unsupported.
_MLM_LACKS = frozenset({"/predict", "/rerank", "/v1/rerank", "/v2/rerank"})
_CLASSIFIER_LACKS = frozenset(
    {"/fill-mask", "/embed_sparse", "/rerank", "/v1/rerank", "/v2/rerank"}
)
# Routes where a valid body may ask for more than any model gives (dimensions above its size):
# 400 Unsupported too.
_MAY_EXCEED = frozenset({"/embed", "/v1/embeddings"})
# The classifier run: the routes that classify (and those it refuses).
_CLASSIFIER_PATHS = frozenset({"/predict", "/", "/fill-mask", "/rerank"})
# The reranker run (a one-label classifier): the routes that score pairs.
_RERANKER_LACKS = frozenset({"/fill-mask", "/embed_sparse"})
_RERANKER_PATHS = frozenset({"/rerank", "/v1/rerank", "/v2/rerank", "/predict", "/"})


@pytest.fixture(scope="module")
def schema(tmp_path_factory) -> Iterator[schemathesis.BaseSchema]:
    models = tmp_path_factory.mktemp("fuzz-models")
    build_checkpoint(models / "a", seed=5)
    token_file = models.parent / "fuzz-token"
    token_file.write_text(TOKEN)
    # A body limit far above anything generated: hypothesis occasionally builds a multi-MB
    # negative body, whose correct answer (413, tested at the exact boundary in
    # test_input_limits) is not what this contract is about.
    config = serve_config(
        models / "a",
        models_root=models,
        admin_token_file=token_file,
        max_queue=10_000,
        max_body_bytes=256_000_000,
    )
    app = create_app(config)
    # from_asgi starts the app's lifespan and keeps it running for every case; stop it at the end
    # so that the model and batch worker do not outlive this module.
    loaded = schemathesis.openapi.from_asgi("/openapi.json", app)
    try:
        yield loaded
    finally:
        schemathesis_asgi.shutdown_lifespans()


def _head_schema(factory, name: str, seed: int, labels: tuple[str, ...]):
    """The schema of a server of a random classifier over ``labels`` (one label: a reranker),
    its lifespan stopped at the end."""
    models = factory.mktemp(f"fuzz-{name}")
    build_checkpoint(models / name, seed=seed, labels=labels)
    config = serve_config(models / name, max_queue=10_000, max_body_bytes=256_000_000)
    loaded = schemathesis.openapi.from_asgi("/openapi.json", create_app(config))
    try:
        yield loaded
    finally:
        schemathesis_asgi.shutdown_lifespans()


@pytest.fixture(scope="module")
def classifier_schema(tmp_path_factory) -> Iterator[schemathesis.BaseSchema]:
    yield from _head_schema(tmp_path_factory, "clf", 5, ("neg", "pos", "neutral"))


@pytest.fixture(scope="module")
def reranker_schema(tmp_path_factory) -> Iterator[schemathesis.BaseSchema]:
    yield from _head_schema(tmp_path_factory, "rr", 7, ("score",))


def _contract_for(lacks: frozenset[str]):
    """The contract beyond the schema, for a model that cannot serve the routes in ``lacks``."""

    def contract(ctx, response, case) -> bool | None:
        """Every error is exactly the one error shape; an inference route (ample queue, small
        bodies) answers only 200 or a 422 validation error, or 400 Unsupported where the model
        lacks the head it needs (always possible on the Inference API route, which picks the
        task from the body)."""
        if response.status_code >= 400:
            body = response.json()
            assert isinstance(body, dict) and set(body) == {"error", "error_type"}, body
            assert body["error"] and body["error_type"], body
        path = case.operation.path
        if path in _INFERENCE or path == "/":
            refusable = path in lacks or path in _MAY_EXCEED or path == "/"
            allowed = (200, 400, 422) if refusable else (200, 422)
            assert response.status_code in allowed, response.status_code
            if response.status_code == 422:
                assert response.json()["error_type"] == "Validation"
            if response.status_code == 400:
                assert response.json()["error_type"] == "Unsupported"
        return None

    return contract


def _steer(case, add_mask: bool):
    """Append a [MASK] to positive fill-mask inputs so that the computing path is fuzzed too."""
    if case.operation.path == "/fill-mask" and add_mask and isinstance(case.body, dict):
        inputs = case.body.get("inputs")
        if isinstance(inputs, str):
            case.body["inputs"] = inputs + " [MASK]"
        elif isinstance(inputs, list):
            case.body["inputs"] = [f"{t} [MASK]" if isinstance(t, str) else t for t in inputs]
    return case


def _fuzz_operation(
    operation,
    mode: GenerationMode,
    cases: int,
    derandomize: bool,
    seen: collections.Counter,
    contract,
) -> None:
    """Send up to ``cases`` cases of one operation in one mode; count them in ``seen``."""
    path = operation.path
    strategy = st.tuples(operation.as_strategy(generation_mode=mode), st.booleans(), st.booleans())

    @hypothesis.settings(
        max_examples=cases,
        deadline=None,
        database=None,
        derandomize=derandomize,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate, hypothesis.Phase.shrink],
    )
    @hypothesis.given(strategy)
    def run(drawn):
        case, add_mask, with_token = drawn
        if mode is GenerationMode.POSITIVE:
            case = _steer(case, add_mask)
        headers = (
            {"Authorization": f"Bearer {TOKEN}"}
            if with_token and path.startswith("/admin")
            else None
        )
        seen["attempted"] += 1
        response = case.call(headers=headers)
        seen[(mode.value, path, response.status_code)] += 1
        case.validate_response(
            response, checks=CHECKS, additional_checks=[contract], headers=headers
        )

    run()


def _fuzz(
    schema,
    cases_per_mode: int,
    derandomize: bool,
    lacks: frozenset[str] = _MLM_LACKS,
    paths: frozenset[str] | None = None,
) -> collections.Counter:
    """Every operation (or those of ``paths``) in both modes; case counts by (mode, path,
    status), and "attempted"."""
    seen: collections.Counter = collections.Counter()
    contract = _contract_for(lacks)
    for result in schema.get_all_operations():
        operation = result.ok()
        if paths is not None and operation.path not in paths:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.NEGATIVE and operation.path in _NO_INPUT:
                continue  # nothing to corrupt: no parameters and no body
            _fuzz_operation(operation, mode, cases_per_mode, derandomize, seen, contract)
    return seen


def _answered(seen: collections.Counter) -> dict[tuple[str, str, int], int]:
    return {k: n for k, n in seen.items() if k != "attempted"}


def _record(figures, seen: collections.Counter) -> int:
    """Record the figures; the number of cases answered."""
    answered = _answered(seen)
    by_mode: collections.Counter = collections.Counter()
    by_status: collections.Counter = collections.Counter()
    for (mode, _, status), n in answered.items():
        by_mode[mode] += n
        by_status[status] += n
    total = sum(answered.values())
    figures.record(
        sent=seen["attempted"],
        positive=by_mode["positive"],
        negative=by_mode["negative"],
        ok_200=by_status[200],
        rejected_4xx=sum(n for s, n in by_status.items() if 400 <= s < 500),
        failed=sum(n for s, n in by_status.items() if s >= 500),
        lost=seen["attempted"] - total,
        ok_200_by_route={p: seen[("positive", p, 200)] for p in _INFERENCE},
    )
    return total


def test_schema_fuzz_no_5xx_and_schema_conformant(schema, figures):
    seen = _fuzz(schema, cases_per_mode=75, derandomize=True)
    answered = _record(figures, seen)
    assert answered == seen["attempted"] >= 1000
    assert all(status < 500 for (_, _, status) in _answered(seen))
    # The fuzz reached both the computing path and validation on every inference route (the
    # refusal, on the route that needs a classifier).
    for path in (*_INFERENCE, "/"):
        assert seen[("positive", path, 400 if path in _MLM_LACKS else 200)] > 0, path
        assert seen[("negative", path, 422)] > 0, path
    statuses = {s for (_, p, s) in _answered(seen) if p == "/admin/reload"}
    assert 401 in statuses and statuses & {404, 422}  # without and past authentication


def _fuzz_head(schema, figures, lacks, paths, computed, minimum: int) -> collections.Counter:
    """Fuzz the routes of ``paths`` on a classifier's server: at least ``minimum`` cases, no
    5xx, and each route of ``computed`` both answered (200) and validated (422)."""
    seen = _fuzz(schema, cases_per_mode=60, derandomize=True, lacks=lacks, paths=paths)
    answered = _record(figures, seen)
    assert answered == seen["attempted"] >= minimum
    assert all(status < 500 for (_, _, status) in _answered(seen))
    for path in computed:
        assert seen[("positive", path, 200)] > 0, path
        assert seen[("negative", path, 422)] > 0, path
    return seen


@pytest.mark.slow  # the main fuzz covers /predict's refusal; this serves a classifier
def test_schema_fuzz_of_a_classifier(classifier_schema, figures):
    seen = _fuzz_head(
        classifier_schema, figures, _CLASSIFIER_LACKS, _CLASSIFIER_PATHS, ("/predict", "/"), 300
    )
    assert seen[("positive", "/fill-mask", 400)] > 0  # no MLM head: refused


@pytest.mark.slow  # the main fuzz covers the rerank routes' refusal; this serves a reranker
def test_schema_fuzz_of_a_reranker(reranker_schema, figures):
    computed = ("/rerank", "/v1/rerank", "/v2/rerank", "/predict")
    _fuzz_head(reranker_schema, figures, _RERANKER_LACKS, _RERANKER_PATHS, computed, 500)


@pytest.mark.long
def test_schema_fuzz_long_random_seed(schema, figures):
    seen = _fuzz(schema, cases_per_mode=450, derandomize=False)
    answered = _record(figures, seen)
    assert answered == seen["attempted"] >= 4500
    assert all(status < 500 for (_, _, status) in _answered(seen))
