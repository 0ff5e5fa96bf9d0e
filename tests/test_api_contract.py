"""The OpenAPI document is the contract: requests generated from the app's own /openapi.json.

Hypothesis strategies are built here from each operation's JSON schemas (parameters and request
bodies, $refs resolved) and sent to the aiohttp app in-process, with the read model of
tests/test_api.py and a sink that encodes every record with the topics' Avro schemas, as the Kafka
sink would (so a value the broker could not carry shows up as the 503 it would be). Properties:

1. nothing a client sends yields a 5xx, and every status is one the operation documents;
2. a schema-valid request is never a 400, unless the field the 400 names carries an ``x-rule``
   (a rule JSON Schema cannot state, described in the document);
3. a request that breaks the schema in one place gets a 400 whose error names that field;
4. a method a path does not declare gets a 405 with an Allow header listing the declared ones;
5. without a credential every guarded operation is a 401.

The counts (requests per operation, statuses seen) are printed at the end of the module.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from schemas.codec import make_codec
from streams.api.routes import create_api
from tests.test_api import AUTH, NOW, TADM, fed_model, verdict

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
CONTRACT = settings(max_examples=600, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.function_scoped_fixture])
# RFC 3339 date-time, written independently of the server's parser.
RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)", re.ASCII)
# Values the fixtures make meaningful: a declined payment (disputable), an approved one.
KNOWN = {"transaction_id": ["tx-20", "tx-1", "tx-9"], "case_id": ["case-v-9", "case-v-10"]}


class AvroSink:
    """Commands and audits encoded as the Kafka sink would encode them; a failure raises."""

    def __init__(self) -> None:
        self.codec = make_codec(None)
        self.commands: list[dict[str, Any]] = []
        self.audits: list[dict[str, Any]] = []

    async def command(self, record: dict[str, Any]) -> None:
        self.codec.encode("case_command", record, topic="t")
        self.commands.append(record)

    async def audit(self, record: dict[str, Any]) -> None:
        self.codec.encode("audit", record, topic="t")
        self.audits.append(record)


@dataclass
class Harness:
    loop: asyncio.AbstractEventLoop
    client: TestClient[web.Request, web.Application]
    doc: dict[str, Any]
    tried: Counter[str] = field(default_factory=Counter)
    by_property: Counter[str] = field(default_factory=Counter)
    statuses: defaultdict[str, Counter[int]] = field(
        default_factory=lambda: defaultdict(Counter))

    def __repr__(self) -> str:
        return "Harness()"

    def send(self, op: str, method: str, path: str, query: dict[str, str] | None = None,
             body: Any = None, raw: bytes | None = None, token: str | None = TADM
             ) -> tuple[int, Any, dict[str, str]]:
        """One request; returns status, JSON body (or None) and headers."""
        async def go() -> tuple[int, Any, dict[str, str]]:
            url = URL(str(self.client.make_url("/")).rstrip("/") + path, encoded=True)
            if query:
                url = url.with_query(query)
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            data = raw if raw is not None else (None if body is None else json.dumps(body))
            if data is not None:
                headers["Content-Type"] = "application/json"
            async with self.client.session.request(method, url, data=data,
                                                   headers=headers) as resp:
                status, head = resp.status, dict(resp.headers)
                if head.get("Content-Type", "").startswith("text/event-stream"):
                    return status, None, head  # an open stream: its status is the answer
                text = await resp.text()
            try:
                return status, json.loads(text), head
            except ValueError:
                return status, None, head

        status, payload, head = self.loop.run_until_complete(asyncio.wait_for(go(), 10))
        self.tried[op] += 1
        self.statuses[op][status] += 1
        return status, payload, head


@pytest.fixture(scope="module")
def harness(pytestconfig: pytest.Config) -> Iterator[Harness]:
    loop = asyncio.new_event_loop()
    model = fed_model()
    model.apply("verdict", verdict(20, "tok_carol", "DECLINE"))
    app = create_api(model, AvroSink(), AUTH, clock=lambda: NOW, heartbeat_s=0.05)

    async def start() -> TestClient[web.Request, web.Application]:
        client: TestClient[web.Request, web.Application] = TestClient(TestServer(app))
        await client.start_server()
        return client

    client = loop.run_until_complete(start())
    doc = loop.run_until_complete(_spec(client))
    h = Harness(loop, client, doc)
    yield h
    loop.run_until_complete(client.close())
    loop.close()
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    assert capture is not None
    with capture.global_and_fixture_disabled():
        documented_ops = [op for op in h.tried if not op.startswith("(")]
        print(f"\n[contract] {len(documented_ops)} documented operations, "
              f"{sum(h.tried.values())} requests ({dict(h.by_property)}); statuses: "
              f"{dict(sorted(sum(h.statuses.values(), Counter()).items()))}")
        for op in sorted(h.tried):
            print(f"[contract]   {op:45} {h.tried[op]:5}  {dict(sorted(h.statuses[op].items()))}")


async def _spec(client: TestClient[web.Request, web.Application]) -> dict[str, Any]:
    resp = await client.get("/openapi.json", headers={"Authorization": f"Bearer {TADM}"})
    assert resp.status == 200
    doc: dict[str, Any] = await resp.json()
    return doc


# -- strategies from the document ---------------------------------------------------------------

@dataclass(frozen=True)
class Op:
    name: str  # "POST /api/cases/{case_id}/claim"
    method: str
    path: str
    spec: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Request:
    op: Op
    path: str
    query: dict[str, str]
    body: Any = None
    raw: bytes | None = None
    broken: str | None = None  # the field a schema-violating request breaks

    def __repr__(self) -> str:
        return (f"{self.op.method} {self.path} query={self.query} body={self.body!r} "
                f"raw={self.raw!r} broken={self.broken}")


def operations(doc: dict[str, Any]) -> list[Op]:
    return [Op(f"{m.upper()} {p}", m.upper(), p, spec)
            for p, ops in doc["paths"].items() for m, spec in ops.items()]


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = doc
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def _offset(minutes: int) -> str:
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


@st.composite
def rfc3339(draw: st.DrawFn, around: datetime | None = None) -> str:
    """A valid RFC 3339 date-time: anywhere in years 1..9999, or (``around``) within 90 days
    after it, with any offset, fraction and letter case the grammar allows."""
    if around is None:
        moment = draw(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
    else:
        moment = (around + timedelta(seconds=draw(st.integers(1, 90 * 86400 - 60)))
                  ).replace(tzinfo=None)
    zone = draw(st.one_of(st.sampled_from(["Z", "z"]),
                          st.integers(-23 * 60 - 59, 23 * 60 + 59).map(_offset)))
    minutes = 0 if zone in "Zz" else (1 if zone[0] == "+" else -1) * (
        int(zone[1:3]) * 60 + int(zone[4:]))
    if around is not None:  # the same instant, written in that zone
        moment = moment + timedelta(minutes=minutes)
    frac = draw(st.one_of(st.just(""), st.integers(1, 9).flatmap(
        lambda n: st.text("0123456789", min_size=n, max_size=n).map(lambda d: "." + d))))
    sep = draw(st.sampled_from("Tt"))
    return f"{moment:%Y-%m-%d}{sep}{moment:%H:%M:%S}{frac}{zone}"


NASTY = ["a", " padded ", "a/b", "..", ".", "%", "?x=1", "#frag", "\u00e9t\u00e9", "\U0001f600",
         "x\u2028y", "tab\tinside" , "a" * 200, "\u200b x"]


def valid_string(schema: dict[str, Any], name: str) -> st.SearchStrategy[str]:
    if schema.get("format") == "date-time":
        return st.one_of(rfc3339(), rfc3339(NOW)) if "x-rule" in schema else rfc3339()
    lo, hi = schema.get("minLength", 0), schema.get("maxLength", 300)
    pattern = re.compile(schema["pattern"]) if "pattern" in schema else None
    base = st.one_of(st.text(min_size=lo, max_size=min(hi, 40)),
                     st.sampled_from(NASTY + KNOWN.get(name, [])),
                     st.sampled_from(KNOWN.get(name, ["x"])))
    return base.filter(lambda s: lo <= len(s) <= hi and (pattern is None
                                                         or pattern.search(s) is not None))


def valid_value(doc: dict[str, Any], schema: dict[str, Any], name: str
                ) -> st.SearchStrategy[Any]:
    schema = resolve(doc, schema)
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "integer":
        lo, hi = schema.get("minimum"), schema.get("maximum")
        ints = st.integers(lo, hi)
        return st.one_of(ints, *(st.just(v) for v in (lo, hi) if v is not None))
    if kind == "string":
        return valid_string(schema, name)
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: valid_value(doc, v, k) for k, v in props.items() if k in required},
            optional={k: valid_value(doc, v, k) for k, v in props.items() if k not in required})
    raise AssertionError(f"no strategy for {schema}")


def invalid_value(doc: dict[str, Any], schema: dict[str, Any], in_query: bool
                  ) -> st.SearchStrategy[Any]:
    """Values that break ``schema`` (for a query parameter: as the text sent)."""
    schema = resolve(doc, schema)
    kind = schema.get("type")
    options: list[st.SearchStrategy[Any]] = []
    if not in_query:  # the wrong JSON type
        wrong: list[Any] = [None, True, [], {}, 1.5]
        wrong += [1, 0] if kind == "string" else ["1", "x"]
        options.append(st.sampled_from(wrong))
    if "enum" in schema:
        allowed = {str(v) for v in schema["enum"]} if in_query else set(schema["enum"])
        options.append(st.text(max_size=12).filter(lambda s: s not in allowed))
        if kind == "integer":
            options.append(st.integers().filter(lambda i: (str(i) if in_query else i)
                                                not in allowed).map(str if in_query else int))
    elif kind == "integer":
        lo, hi = schema.get("minimum"), schema.get("maximum")
        outside = []
        if lo is not None:
            outside.append(st.integers(max_value=lo - 1))
        if hi is not None:
            outside.append(st.integers(min_value=hi + 1, max_value=hi + 2**70))
        ints = st.one_of(*outside)
        options.append(ints.map(str) if in_query else ints)
        if in_query:
            options.append(st.sampled_from(["", "1.0", "1_0", " 5", "+5", "\u0665", "0x1",
                                            "1e3", "NaN"]))
        else:
            options.append(st.sampled_from([1.5, -0.5, 2.0**64 + 0.0]))
    elif kind == "string":
        if schema.get("format") == "date-time":
            options.append(st.one_of(
                st.text(max_size=30).filter(lambda s: RFC3339.fullmatch(s) is None),
                st.sampled_from(["2025-03-05T00:00:00", "2025-03-05 00:00:00Z",
                                 "20250305T000000Z", "2025-03-05T00:00:00+0000",
                                 "2025-03-05T00:00:00 Z", "2025-3-5T00:00:00Z",
                                 "\u0662025-03-05T00:00:00Z"])))
        lo, hi = schema.get("minLength", 0), schema.get("maxLength")
        if lo > 0:
            options.append(st.just(""))
        if hi is not None:
            options.append(st.integers(hi + 1, hi + 50).map(lambda n: "y" * n))
        if "pattern" in schema:
            pattern = re.compile(schema["pattern"])
            blanks = st.text(" \t\n\r\u00a0\u2003\u3000\ufeff", min_size=1, max_size=6)
            control = st.tuples(st.text(max_size=5), st.sampled_from(
                [chr(c) for c in [*range(0, 32), *range(0x7F, 0xA0)]]), st.text(max_size=5)
                                ).map("".join)
            options.append(st.one_of(blanks, control).filter(
                lambda s: pattern.search(s) is None and len(s) >= lo))
    return st.one_of(*options)


def _encode_path(op: Op, values: dict[str, str]) -> str:
    path = op.path
    for name, value in values.items():
        path = path.replace("{" + name + "}", quote(value, safe=""))
    return path


def _params(op: Op, where: str) -> list[dict[str, Any]]:
    return [p for p in op.spec.get("parameters", []) if p["in"] == where]


def _query_text(value: Any) -> str:
    return str(value)


@st.composite
def valid_request(draw: st.DrawFn, doc: dict[str, Any], op: Op) -> Request:
    path_values = {p["name"]: draw(valid_value(doc, p["schema"], p["name"]))
                   for p in _params(op, "path")}
    query = {}
    for p in _params(op, "query"):
        if p["name"] == "ticket":
            continue  # single-use: tested on its own below
        if draw(st.booleans()):
            query[p["name"]] = _query_text(draw(valid_value(doc, p["schema"], p["name"])))
    body = None
    if "requestBody" in op.spec:
        schema = op.spec["requestBody"]["content"]["application/json"]["schema"]
        body = draw(valid_value(doc, schema, "body"))
    return Request(op, _encode_path(op, path_values), query, body)


@st.composite
def invalid_request(draw: st.DrawFn, doc: dict[str, Any], op: Op) -> Request:
    """A valid request broken in exactly one place."""
    good = draw(valid_request(doc, op))
    body_schema = (resolve(doc, op.spec["requestBody"]["content"]["application/json"]["schema"])
                   if "requestBody" in op.spec else None)
    kinds = ["unknown_query"]
    if _params(op, "path"):
        kinds.append("path")
    if [p for p in _params(op, "query") if p["schema"].get("type") != "string"
            or "enum" in p["schema"] or "pattern" in p["schema"]]:
        kinds.append("query")
    if body_schema is not None:
        kinds += ["not_json", "not_object", "missing", "extra", "property"]
    kind = draw(st.sampled_from(kinds))
    if kind == "unknown_query":
        known = {p["name"] for p in _params(op, "query")}
        name = draw(st.from_regex(r"[a-z_]{1,12}", fullmatch=True).filter(
            lambda n: n not in known))
        return Request(op, good.path, {**good.query, name: "1"}, good.body, broken=name)
    if kind == "path":
        param = draw(st.sampled_from(_params(op, "path")))
        values = {p["name"]: "ok" for p in _params(op, "path")}
        # An empty segment is another URL (an undeclared path, 404), not an empty value.
        values[param["name"]] = draw(invalid_value(doc, param["schema"], in_query=True
                                                    ).filter(bool))
        return Request(op, _encode_path(op, values), good.query, good.body,
                       broken=param["name"])
    if kind == "query":
        param = draw(st.sampled_from([p for p in _params(op, "query")
                                      if p["schema"].get("type") != "string"
                                      or "enum" in p["schema"] or "pattern" in p["schema"]]))
        value = draw(invalid_value(doc, param["schema"], in_query=True))
        return Request(op, good.path, {**good.query, param["name"]: str(value)}, good.body,
                       broken=param["name"])
    assert body_schema is not None and isinstance(good.body, dict)
    if kind == "not_json":
        raw = draw(st.sampled_from([b"", b"{", b"{'reason': 'x'}", b"NaN", b"[1,]",
                                    b'{"reason": NaN}', b"\xff\xfe", b"[" * 5000]))
        return Request(op, good.path, good.query, raw=raw, broken="body")
    if kind == "not_object":
        return Request(op, good.path, good.query,
                       draw(st.sampled_from([None, [], "x", 1, [good.body]])), broken="body")
    props = body_schema["properties"]
    if kind == "missing":
        name = draw(st.sampled_from(body_schema["required"]))
        return Request(op, good.path, good.query,
                       {k: v for k, v in good.body.items() if k != name}, broken=name)
    if kind == "extra":
        name = draw(st.sampled_from(["actor", "role", "id", "Reason", "extra"]))
        return Request(op, good.path, good.query, {**good.body, name: "x"}, broken=name)
    name = draw(st.sampled_from(sorted(props)))
    value = draw(invalid_value(doc, props[name], in_query=False))
    return Request(op, good.path, good.query, {**good.body, name: value}, broken=name)


def documented(op: Op) -> set[int]:
    return {int(code) for code in op.spec["responses"]}


def field_schema(doc: dict[str, Any], op: Op, name: str) -> dict[str, Any]:
    for p in op.spec.get("parameters", []):
        if p["name"] == name:
            return resolve(doc, p["schema"])
    if "requestBody" in op.spec:
        body = resolve(doc, op.spec["requestBody"]["content"]["application/json"]["schema"])
        return resolve(doc, body["properties"].get(name, {}))
    return {}


def requests(doc: dict[str, Any], make: Any) -> st.SearchStrategy[Request]:
    return st.sampled_from(operations(doc)).flatmap(lambda op: make(doc, op))


# -- the properties ----------------------------------------------------------------------------

def _doc() -> dict[str, Any]:
    from streams.api.routes import openapi

    served: dict[str, Any] = json.loads(json.dumps(openapi()))  # as served: plain JSON
    return served


DOC = _doc()


@CONTRACT
@given(req=requests(DOC, valid_request))
def test_schema_valid_requests_are_accepted_or_refused_as_documented(
        harness: Harness, req: Request) -> None:
    assert harness.doc == DOC  # the document strategies were built from is the one served
    harness.by_property["schema-valid"] += 1
    status, payload, _ = harness.send(req.op.name, req.op.method, req.path, req.query, req.body)
    assert status < 500, (req, status, payload)
    assert status in documented(req.op), (req, status, payload)
    if status == 400:
        name = payload["error"].get("field")
        assert name and "x-rule" in field_schema(DOC, req.op, name), (req, payload)


@CONTRACT
@given(req=requests(DOC, invalid_request))
def test_schema_violating_requests_are_400_naming_the_field(
        harness: Harness, req: Request) -> None:
    harness.by_property["schema-violating"] += 1
    status, payload, _ = harness.send(req.op.name, req.op.method, req.path, req.query, req.body,
                                      raw=req.raw)
    assert status == 400, (req, status, payload)
    error = payload["error"]
    assert error["field"] == req.broken and error["message"].startswith(req.broken), (req, error)


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_undeclared_methods_are_405_with_allow(harness: Harness, data: st.DataObject) -> None:
    harness.by_property["undeclared method"] += 1
    paths = {p: {m.upper() for m in ops} for p, ops in DOC["paths"].items()}
    path = data.draw(st.sampled_from(sorted(paths)))
    method = data.draw(st.sampled_from([m for m in METHODS if m not in paths[path]]))
    op = Op("(undeclared methods)", method, path, {})
    values = {n: data.draw(st.text(min_size=1, max_size=20))
              for n in re.findall(r"\{(\w+)\}", path)}
    status, _, headers = harness.send(op.name, method, _encode_path(op, values),
                                      token=data.draw(st.sampled_from([TADM, None])))
    assert status == 405, (method, path, status)
    assert {m.strip() for m in headers["Allow"].split(",")} == paths[path], headers


def test_every_guarded_operation_refuses_without_a_credential(harness: Harness) -> None:
    for op in operations(DOC):
        if op.spec.get("security") == []:
            continue
        path = _encode_path(op, {p["name"]: "x" for p in _params(op, "path")})
        for token in (None, "nope", "rk_000000000000_" + "a" * 32):
            harness.by_property["no valid credential"] += 1
            status, payload, headers = harness.send(op.name, op.method, path, token=token)
            assert status == 401 and 401 in documented(op), (op.name, status)
            assert headers["WWW-Authenticate"] == "Bearer"
            assert payload["error"]["code"] == "UNAUTHENTICATED"


def test_what_a_hostile_client_found(harness: Harness) -> None:
    """The defects found by hand, as fixed cases: each is a 400 naming the field now."""
    claim = "POST /api/cases/{case_id}/claim"
    for body, name in [({"reason": "x", "expected_version": 2**64}, "expected_version"),
                       ({"reason": "x", "expected_version": 2**63}, "expected_version"),
                       ({"reason": "x", "expected_version": None}, "expected_version"),
                       ({"reason": " \u3000 "}, "reason"), ({"reason": "a\x00b"}, "reason"),
                       ({"reason": "x\ud800"}, "reason")]:
        status, payload, _ = harness.send(claim, "POST", "/api/cases/case-v-9/claim", body=body)
        assert status == 400 and payload["error"]["field"] == name, (body, payload)
    ok, _, _ = harness.send(claim, "POST", "/api/cases/case-v-9/claim",
                            body={"reason": "tab\tand\nnewline", "expected_version": 2**63 - 1})
    assert ok == 202
    for path in ("/api/cases/%20", "/api/cases/a%00b"):
        status, payload, _ = harness.send("GET /api/cases/{case_id}", "GET", path)
        assert status == 400 and payload["error"]["field"] == "case_id", (path, payload)
    status, _, headers = harness.send("(undeclared methods)", "DELETE", "/api/cases")
    assert status == 405 and headers["Allow"] == "GET"
