"""Schemathesis against the ops API's own OpenAPI document, served by a live Sluice.

Every operation gets a bounded, derandomized run (examples, coverage and fuzzing phases;
positive and negative data): no 5xx, answers that match the documented statuses,
content types and schemas, and every 4xx in the ops error shape
`{"error": {"code", "message", "fields"}}`.

The document is built in-process when the module is imported (a few tenths of a second),
and its operations are read then, to make one test per operation. Each operation's Hypothesis
test (its examples, its coverage cases, its fuzzing strategy) is built only when that
test runs: schemathesis's `@schema.parametrize()` built them all while collecting, about
1.7 s of CPU in every pytest-xdist worker, where only the one or two workers that run
this file need them; its fixture-based lazy loader, which builds them at run time, breaks
on pytest 9 (items have no `_nodeid` any more) and makes one test of all the operations.
So `run_operation_test` does for one operation what the plugin does: it calls
schemathesis's own test builder with what the plugin passes it, and runs the test as the
plugin runs its items. Those are schemathesis internals, pinned by `schemathesis==4.32.5`
in pyproject.toml: a change in them breaks an import or a call, which fails the tests.

`test_served_schema_is_the_fuzzed_one` proves the document is the very one the live server
serves at /api/openapi.json; requests go to the live server. The bugs this pass found are
pinned at the end as the behaviour they now have.
"""

from __future__ import annotations

import itertools
import json
import re
import unittest
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings
from schemathesis.checks import CheckContext, load_all_checks, run_checks_for
from schemathesis.core.failures import Failure, FailureGroup, as_reported_failure
from schemathesis.core.result import Err
from schemathesis.core.transport import Response
from schemathesis.generation.case import Case
from schemathesis.generation.feedback import FeedbackSources
from schemathesis.generation.hypothesis.builder import (
    InvalidHeadersExampleMark,
    InvalidRegexMark,
    MissingPathParameters,
    NonSerializableMark,
    UnsatisfiableExampleMark,
    UnserializablePayloadMark,
)
from schemathesis.generation.hypothesis.reporting import ignore_hypothesis_output
from schemathesis.openapi import from_dict
from schemathesis.pytest._test_builder import build_operation_test
from schemathesis.python._constants.orchestrator import make_constants_value_source
from schemathesis.schemas import APIOperation
from schemathesis.transport.requests import ManagedCookiesSession

from dashboard.api import api
from tests.fuzz.contract import ops_error_problem
from tests.fuzz.server import ADMIN_TOKEN, fuzz_sluice
from tests.servers import SluiceServer

MAX_EXAMPLES = 25
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SluiceServer]:
    # Wrong admin tokens are throttled per address (dashboard/auth_throttle.py), and the
    # ignored_auth check sends one after every accepted case: each case says it comes from
    # an address of its own, through a proxy the server trusts (see test_ops_api), so
    # none is refused as a repeat guess.
    # uvicorn, serve's default, not the fuzzers' daphne (tests/fuzz/server.py): the team
    # API's fuzzing pins what daphne refuses before Sluice runs; here daphne only needed an
    # allowance (its bare 400 to a malformed multipart body, now gone: every 4xx is checked
    # for the ops shape), and under uvicorn the server uses about a quarter less CPU.
    env = {"SLUICE_TRUSTED_PROXIES": "127.0.0.1", "SLUICE_SERVER": "uvicorn"}
    with fuzz_sluice(tmp_path_factory.mktemp("fuzz"), env) as server:
        yield server


@pytest.fixture(scope="module")
def http_session() -> Iterator[ManagedCookiesSession]:
    """One session for every case: its connections kept alive, where schemathesis would
    otherwise open a session and a connection for each request (and the server accept and
    set up each); response cookies dropped after each request, as schemathesis's own runner
    does, so no case sees another's. Not the environment's proxies or netrc (loopback only),
    which requests would read again for each request."""
    session = ManagedCookiesSession()
    session.trust_env = False
    with session:
        yield session


_callers = itertools.count()


def new_caller() -> dict[str, str]:
    number = next(_callers) % 2**24
    return {"x-forwarded-for": f"10.{number >> 16}.{(number >> 8) % 256}.{number % 256}"}


def _openapi_document() -> dict[str, Any]:
    # Through JSON, as the server serves it (datetimes and the like become strings).
    return json.loads(json.dumps(api.get_openapi_schema(), default=str))


schema = from_dict(_openapi_document())
schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True, database="none")


@schema.auth()
class AdminToken:
    """An auth provider rather than plain headers: the `ignored_auth` check can then strip
    the token and confirm that the API refuses without it (it matches `Authorization`)."""

    def get(self, case: Case, ctx: object) -> str:
        return ADMIN_TOKEN

    def set(self, case: Case, data: str, ctx: object) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


class OpsErrorShape(Failure):
    """A 4xx whose body is not the ops API's documented error shape."""

    def __init__(self, *, operation: str, message: str) -> None:
        self.operation = operation
        self.title = "Ops API error shape violated"
        self.message = message
        self.case_id = None
        self.severity = None

    @property
    def _unique_key(self) -> str:
        return self.message


def _content_type(headers: Any) -> str:
    value = headers.get("content-type", "")
    return ";".join(value) if isinstance(value, list) else value


def ops_error_shape(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    problem = ops_error_problem(
        response.status_code, _content_type(response.headers), response.content
    )
    if problem is not None:
        raise OpsErrorShape(
            operation=case.operation.label,
            message=f"{response.status_code}: {problem}: {response.content[:300]!r}",
        )
    return None


# --- the fuzz run ----------------------------------------------------------------------------
def test_served_schema_is_the_fuzzed_one(fuzz_server: SluiceServer) -> None:
    served = httpx.get(f"{fuzz_server.url}/api/openapi.json", headers=ADMIN, timeout=10)
    assert served.status_code == 200
    assert served.json() == _openapi_document()


# Derandomized, Hypothesis draws the fuzzing phase's cases from a seed it derives from this
# function's source and signature: an edit to it draws others (the examples and coverage
# cases stay the same).
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def fuzz_case(case: Case, fuzz_server: SluiceServer, http_session: ManagedCookiesSession) -> None:
    case.call_and_validate(
        base_url=fuzz_server.url,
        session=http_session,
        timeout=10,
        headers=new_caller(),
        additional_checks=[ops_error_shape],
    )


def _operations() -> list[APIOperation]:
    # Reading the operations costs milliseconds; building their tests is what costs. One
    # that cannot be read fails the module's collection.
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        operations.append(result.ok())
    return operations


OPERATIONS = _operations()


@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
def test_ops_api(
    operation: APIOperation, fuzz_server: SluiceServer, http_session: ManagedCookiesSession
) -> None:
    run_operation_test(operation, fuzz_case, fuzz_server=fuzz_server, http_session=http_session)


# What schemathesis notes on an operation's test when it cannot test part of the operation.
# Its plugin fails the test on the fourth and fifth, on the first three only if no case
# ran at all, and only warns on the last; none is noted for this document, and here any of
# them fails the test, so that no part of an operation goes untested unseen.
UNTESTED = (
    UnsatisfiableExampleMark,
    NonSerializableMark,
    InvalidRegexMark,
    InvalidHeadersExampleMark,
    MissingPathParameters,
    UnserializablePayloadMark,
)


def run_operation_test(operation: APIOperation, test_func: Callable, **fixtures: Any) -> None:
    """Build the operation's Hypothesis test as schemathesis's pytest plugin does while
    collecting (`SchemathesisCase._gen_items`), and run it as the plugin runs its items
    (`pytest_pyfunc_call`): Hypothesis's own output silenced, and a failure raised as
    schemathesis's report of it. See the module docstring for why."""
    __tracebackhide__ = True
    load_all_checks()
    # The plugin runs these checks once the session ends, for every schema it collected;
    # there is none, and as this test could not run one, it fails if one appears.
    assert not run_checks_for(operation.schema).for_run(), "an after-run check would not run"
    test = build_operation_test(
        config=operation.schema.config,
        operation=operation,
        test_func=test_func,
        given_kwargs={},
        feedback=FeedbackSources(
            constants_value_source=make_constants_value_source(operation.schema)
        ),
    )
    untested = {mark.attr_name: value for mark in UNTESTED if (value := mark.get(test)) is not None}
    if untested:
        pytest.fail(f"{operation.label}: schemathesis cannot test all of it: {untested}")
    try:
        with ignore_hypothesis_output():
            test(**fixtures)
    except FailureGroup as exc:
        raise as_reported_failure(exc) from None
    except unittest.SkipTest as exc:
        # The plugin skips the test then, but every operation here has cases to run.
        pytest.fail(f"{operation.label}: no case ran ({exc})")


# --- hand-picked requests outside what the document describes ------------------------------
HAND_PICKED: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/api/teams/abc", {}),
    ("GET", "/api/teams/-1", {}),
    ("GET", "/api/teams/99999999999999999999999", {}),
    (
        "POST",
        "/api/teams",
        {"content": b'{"name":', "headers": {"content-type": "application/json"}},
    ),
    (
        "POST",
        "/api/teams",
        {"content": b"\xff\xfe\x00", "headers": {"content-type": "application/json"}},
    ),
    ("POST", "/api/teams", {"content": b"[1, 2]", "headers": {"content-type": "application/json"}}),
    ("POST", "/api/teams", {"content": b'"team"', "headers": {"content-type": "application/json"}}),
    (
        "POST",
        "/api/teams",
        {"content": b"name=x", "headers": {"content-type": "application/x-www-form-urlencoded"}},
    ),
    ("POST", "/api/teams", {"json": {"name": "a" * 81}}),
    ("POST", "/api/teams", {"json": {"name": "ok", "profile": "no-such-profile"}}),
    ("POST", "/api/teams", {"json": {"name": {"nested": [[[[1]]]]}}}),
    ("POST", "/api/teams/1/keys", {"json": {"expires_at": "not a date"}}),
    ("PATCH", "/api/limits/1", {"json": {"requests_per_minute": 2**64}}),
    ("PATCH", "/api/limits/1", {"json": {"burst": "many"}}),
    ("GET", "/api/refusals?size=abc", {}),
    ("GET", "/api/refusals?endpoint=nope", {}),
    ("GET", "/api/refusals?start=2020-13-45", {}),
    ("GET", "/api/refusals?after=" + "A" * 4000, {}),
    ("GET", "/api/audit?after=%00%ff", {}),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs"), HAND_PICKED, ids=[f"{m} {p[:50]}" for m, p, _ in HAND_PICKED]
)
def test_hand_picked(
    fuzz_server: SluiceServer, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    headers = {**ADMIN, **kwargs.pop("headers", {})}
    response = httpx.request(method, fuzz_server.url + path, headers=headers, timeout=10, **kwargs)
    assert response.status_code < 500, (
        f"{method} {path} -> {response.status_code} {response.content[:300]!r}"
    )
    problem = ops_error_problem(
        response.status_code, response.headers.get("content-type", ""), response.content
    )
    assert problem is None, (
        f"{method} {path} -> {response.status_code}: {problem}: {response.content[:300]!r}"
    )


# --- once bugs, now pinned as behaviour ---------------------------------------------------------
def _assert_ops_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, (response.status_code, response.content[:300])
    problem = ops_error_problem(
        response.status_code, response.headers.get("content-type", ""), response.content
    )
    assert problem is None, (problem, response.content[:300])


def test_profile_patch_null_description_is_a_400(fuzz_server: SluiceServer) -> None:
    response = httpx.patch(
        f"{fuzz_server.url}/api/profiles/1", json={"description": None}, headers=ADMIN
    )
    _assert_ops_error(response, 400)


# Found by the fuzz run: ninja's schemas read attributes off any value, so a body that is
# not a JSON object passed as an empty patch (200) where every field is optional.
@pytest.mark.parametrize(
    ("path", "body", "kind"),
    [
        ("/api/profiles/1", b"[]", "an array"),
        ("/api/profiles/1", b'"x"', "a string"),
        ("/api/limits/1", b"[1]", "an array"),
        ("/api/teams/1", b"7", "a number"),
        ("/api/teams/1", b"null", "null"),
    ],
)
def test_a_body_not_an_object_is_a_400(
    fuzz_server: SluiceServer, path: str, body: bytes, kind: str
) -> None:
    response = httpx.patch(
        fuzz_server.url + path,
        content=body,
        headers={**ADMIN, "content-type": "application/json"},
    )
    _assert_ops_error(response, 400)
    assert (
        response.json()["error"]["message"]
        == f"The body must be a JSON object (this one was {kind})."
    )


# Each accepted more, or documented less, than it does (dashboard/api_types.py).
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/usage?start=0.5", None),  # a number is not an ISO 8601 date-time
        ("GET", "/api/refusals?end=1700000000", None),
        ("POST", "/api/teams/1/keys", {"expires_at": 1.5}),
        ("POST", "/api/prices", {"model": "m", "image_price": ""}),  # (documented as valid, below)
        ("POST", "/api/prices", {"model": "m", "override_input": "1e3"}),
        ("POST", "/api/teams/1/budgets", {"unit": "tokens", "period": "day", "limit": "0"}),
        ("POST", "/api/teams/1/budgets", {"unit": "tokens", "period": "day", "limit": True}),
    ],
)
def test_what_the_document_calls_invalid_is_a_400(
    fuzz_server: SluiceServer, method: str, path: str, body: dict | None
) -> None:
    response = httpx.request(method, fuzz_server.url + path, json=body, headers=ADMIN)
    _assert_ops_error(response, 400)


def test_the_document_says_which_decimal_strings_are_amounts(fuzz_server: SluiceServer) -> None:
    # Before, the string branch had no pattern: "" and "abc" were valid by the document.
    document = httpx.get(f"{fuzz_server.url}/api/openapi.json", headers=ADMIN).json()
    schemas = document["components"]["schemas"]
    for shape, field in (("PriceOverrideIn", "image_price"), ("BudgetIn", "limit")):
        branches = schemas[shape]["properties"][field]["anyOf"]
        text = next(b for b in branches if b.get("type") == "string")
        assert all(not re.fullmatch(text["pattern"], bad) for bad in ("", "abc", "-1", "1e3"))
        assert re.fullmatch(text["pattern"], "25.50")


def test_decimal_strings_are_exact_and_numbers_cut_to_six_places(
    fuzz_server: SluiceServer,
) -> None:
    # A decimal string is kept as sent or refused (issue 18: one cut to 6 places still
    # had more digits than SQLite reads back); a JSON number is a double, cut to 6 places.
    refused = httpx.post(
        f"{fuzz_server.url}/api/prices",
        json={"model": "org/priced", "override_input": "0.1234567"},
        headers=ADMIN,
    )
    _assert_ops_error(refused, 400)
    price = httpx.post(
        f"{fuzz_server.url}/api/prices",
        json={"model": "org/priced", "override_input": 0.1234567, "image_price": 2},
        headers=ADMIN,
    )
    assert price.status_code == 200, price.content
    assert Decimal(price.json()["override_input"]) == Decimal("0.123456")
    assert Decimal(price.json()["image_price"]) == 2
    team = httpx.post(
        f"{fuzz_server.url}/api/teams", json={"name": "amounts-team"}, headers=ADMIN
    ).json()
    budget = httpx.post(
        f"{fuzz_server.url}/api/teams/{team['id']}/budgets",
        json={"unit": "dollars", "period": "day", "limit": 0.0000001},
        headers=ADMIN,
    )
    assert budget.status_code == 201, budget.content
    assert Decimal(budget.json()["limit"]) == Decimal("0.000001")  # above 0 stays above 0


# Issue 18: `?after=` with a number of microseconds past year 9999 reached
# datetime.fromtimestamp, whose OSError was a 500; a size of any magnitude was documented.
@pytest.mark.parametrize(
    "query",
    [
        "/api/audit?after=99999999999999999999999",
        "/api/audit?after=99999999999999999999999-1",
        "/api/refusals?after=99999999999999999999999-1",
        "/api/refusals?after=1-99999999999999999999999",
        "/api/refusals?size=99999999999999999999999",
        "/api/refusals?size=0",
    ],
)
def test_out_of_range_query_numbers_are_a_400(fuzz_server: SluiceServer, query: str) -> None:
    _assert_ops_error(httpx.get(fuzz_server.url + query, headers=ADMIN), 400)


def test_per_minute_with_earliest_end_is_not_a_500(fuzz_server: SluiceServer) -> None:
    response = httpx.get(
        f"{fuzz_server.url}/api/refusals/per-minute",
        params={"end": "0001-01-01T00:00:00Z"},
        headers=ADMIN,
    )
    assert response.status_code in (200, 400), (response.status_code, response.content[:300])
    if response.status_code == 400:
        _assert_ops_error(response, 400)


@pytest.mark.parametrize(
    ("method", "path"), [("PUT", "/api/teams"), ("TRACE", "/api/live"), ("DELETE", "/api/teams/1")]
)
def test_unsupported_method_answers_error_shape(
    fuzz_server: SluiceServer, method: str, path: str
) -> None:
    _assert_ops_error(httpx.request(method, fuzz_server.url + path, headers=ADMIN), 405)


def test_multipart_content_type_answers_error_shape(fuzz_server: SluiceServer) -> None:
    response = httpx.post(
        f"{fuzz_server.url}/api/teams",
        content=b'{"name": "x"}',
        headers={**ADMIN, "content-type": "multipart/form-data"},
    )
    _assert_ops_error(response, 400)
    assert "application/json" in response.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/api/", "/api/nope", "/api/teams/", "/api//teams"])
def test_unknown_ops_path_answers_error_shape(fuzz_server: SluiceServer, path: str) -> None:
    _assert_ops_error(httpx.get(fuzz_server.url + path, headers=ADMIN), 404)


def test_oversized_ops_body_answers_error_shape(fuzz_server: SluiceServer) -> None:
    body = json.dumps({"name": "x", "description": "d" * 3_000_000}).encode()
    response = httpx.post(
        f"{fuzz_server.url}/api/profiles",
        content=body,
        headers={**ADMIN, "content-type": "application/json"},
    )
    assert 400 <= response.status_code < 500, response.status_code
    _assert_ops_error(response, response.status_code)


def test_ops_server_survived(fuzz_server: SluiceServer) -> None:
    """Last in the module: the process is alive, and its log has no server error at all."""
    assert all(process.poll() is None for process in fuzz_server.processes)
    assert httpx.get(f"{fuzz_server.url}/healthz", timeout=5).status_code == 200
    log = fuzz_server.log()
    assert "Internal Server Error" not in log and "ops API failed" not in log, log[-3000:]
