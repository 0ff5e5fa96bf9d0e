"""The analyst and SRE HTTP API: reads from a :class:`ReadModel`, writes only case commands.

The API never changes a case itself. It authenticates the caller, validates the request and
publishes a ``case_command`` for the case worker, the single writer that applies commands in log
order (so two analysts racing for a case are decided by the log, and the worker's own checks still
hold if the API is bypassed). Hence a successful write answers 202 Accepted, not 200.

Who the actor is comes only from the bearer token, never from the body. Every refused attempt
(no or unknown token, or too low a role) is published as a REFUSED audit entry, because an
attempt nobody was allowed to make is exactly what an auditor wants to see. Invalid input is
answered with a 400 naming the field: nothing a caller sends is silently ignored, unknown body
fields and query parameters included.

Lookups (a payment's verdicts, a case, disputes) go to the durable store through
streams.api.lookup, with the read model as the cache when the store is down; while it is down the
API is read-only: every command is answered 503, naming why, before anything is published.

The route table below is the single source of both the router and the OpenAPI document, so the
document cannot drift from what is served.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from agents.cases import MAX_WHITELIST, RESOLUTIONS, ROLES, SLA
from schemas.codec import make_codec
from schemas.pan import luhn_valid, redact_text
from streams.api.lookup import Lookups
from streams.api.readmodel import ReadModel, jsonable
from streams.store import StoreUnavailable

__all__ = ["Auth", "CommandSink", "Principal", "create_api", "openapi"]

log = logging.getLogger(__name__)

Record = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DASHBOARD = Path(__file__).with_name("dashboard.html")
CASE_STATUSES = ("OPEN", "CLAIMED", "RESOLVED")
MAX_REASON = 2_000
MAX_LIMIT = 2_000
MAX_ID = 200
_ACTIONS = {"claim": "CLAIM", "release": "RELEASE", "resolve": "RESOLVE",
            "whitelist": "WHITELIST"}


# -- authentication ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Principal:
    """An authenticated caller: ``role`` is one of agents.cases.ROLES (lower case)."""

    user: str
    role: str

    def at_least(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


class Auth:
    """Bearer tokens from configuration; roles are ordered viewer < analyst < admin."""

    def __init__(self, tokens: Mapping[str, Principal]) -> None:
        self._tokens = dict(tokens)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Mapping[str, Any]]) -> Auth:
        """From ``{"<token>": {"user": "alice", "role": "analyst"}}``; a bad entry raises
        ValueError at start-up rather than locking somebody out at 3 a.m."""
        tokens: dict[str, Principal] = {}
        for i, (token, entry) in enumerate(mapping.items()):
            user, role = entry.get("user"), entry.get("role")
            if not isinstance(token, str) or not token.strip():
                raise ValueError(f"token #{i}: must be a non-blank string")
            if not isinstance(user, str) or not user.strip():
                raise ValueError(f"token #{i}: 'user' must be a non-blank string")
            if role not in ROLES:
                raise ValueError(f"token #{i} ({user}): 'role' must be one of {', '.join(ROLES)}")
            tokens[token] = Principal(user.strip(), role)
        return cls(tokens)

    @classmethod
    def from_file(cls, path: str | Path) -> Auth:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of token -> {{user, role}}")
        return cls.from_mapping(data)

    def identify(self, token: str | None) -> Principal | None:
        """The token's principal; compares against every token so timing reveals nothing."""
        if not token:
            return None
        found = None
        given = token.encode()
        for known, principal in self._tokens.items():
            if hmac.compare_digest(given, known.encode()):
                found = principal
        return found


_PRINCIPAL = web.RequestKey("principal", Principal)


class CommandSink(Protocol):
    """Where the API publishes: case_command and audit records, shaped per their Avro schemas."""

    async def command(self, record: dict[str, Any]) -> None: ...

    async def audit(self, record: dict[str, Any]) -> None: ...


# -- errors ----------------------------------------------------------------------------------

class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field

    def response(self) -> web.Response:
        body: Record = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return web.json_response({"error": body}, status=self.status, headers=headers)


def _invalid(name: str, message: str) -> ApiError:
    return ApiError(400, "INVALID", f"{name}: {message}", name)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is the same JSON shape, including aiohttp's own 404/405."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except StoreUnavailable as exc:  # lookups fall back to the cache; this is the safety net
        return ApiError(503, "STORE_UNAVAILABLE", f"the store is unavailable ({exc}); retry"
                        ).response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.upper().replace(" ", "_")
        return ApiError(exc.status, code, f"{request.method} {request.path}: {exc.reason}"
                        ).response()


# -- the route table (router and OpenAPI document) --------------------------------------------

@dataclass(frozen=True)
class _Param:
    name: str
    schema: Record
    description: str


@dataclass(frozen=True)
class _Route:
    method: str
    path: str
    handler: str
    role: str | None  # None: no token needed
    summary: str
    query: tuple[_Param, ...] = ()
    body: str | None = None  # a components/schemas name
    ok: tuple[int, str, Record] = (200, "OK", {"type": "object"})
    extra: dict[int, str] = field(default_factory=dict)


def _ref(name: str) -> Record:
    return {"$ref": f"#/components/schemas/{name}"}


_LIMIT = _Param("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                "How many, newest first.")
_ARRAY: Record = {"type": "array", "items": {"type": "object"}}
_COMMAND_OK = (202, "Published for the case worker, which applies or refuses it",
               _ref("Accepted"))
ROUTES: tuple[_Route, ...] = (
    _Route("GET", "/", "page", None, "The dashboard page (it asks for a token itself)",
           ok=(200, "HTML page", {"type": "string"})),
    _Route("GET", "/openapi.json", "spec", "viewer", "This document"),
    _Route("GET", "/api/cases", "cases", "viewer",
           "Case queue, by priority then due time, with age and overdue flag",
           query=(_Param("status", {"type": "string", "enum": list(CASE_STATUSES)}, "Status."),
                  _Param("priority", {"type": "integer", "enum": sorted(SLA)}, "Priority."),
                  _Param("assignee", {"type": "string"}, "Analyst holding the case.")),
           ok=(200, "Cases", _ARRAY)),
    _Route("GET", "/api/cases/{case_id}", "case", "viewer",
           "A case, its verdict's explanation and the customer's recent verdicts",
           extra={404: "Not in the read model"}),
    *(_Route("POST", f"/api/cases/{{case_id}}/{verb}", verb, "analyst", f"{verb.title()} a case",
             body="ResolveBody" if verb == "resolve" else "CaseBody", ok=_COMMAND_OK)
      for verb in ("claim", "release", "resolve")),
    _Route("POST", "/api/whitelist", "whitelist", "analyst", "Trust a card until a time",
           body="WhitelistBody", ok=_COMMAND_OK),
    _Route("POST", "/api/disputes", "disputes", "analyst",
           "File a customer's dispute of a declined payment: opens (or reopens) its case",
           body="DisputeBody", ok=_COMMAND_OK,
           extra={404: "No verdict for that transaction within the decision topic's "
                       "retention"}),
    _Route("GET", "/api/disputes", "dispute_list", "viewer",
           "Disputes filed, newest first, each with its payment's case",
           query=(_Param("transaction_id", {"type": "string", "minLength": 1,
                                            "maxLength": MAX_ID}, "Of this payment only."),
                  _LIMIT),
           ok=(200, "Disputes and where they were read from", _ref("Disputes"))),
    _Route("GET", "/api/verdicts/{transaction_id}", "verdict", "viewer",
           "A payment's verdict that stands and every verdict on it, newest first, from the "
           "store (from the recent window while the store is down)",
           ok=(200, "Verdicts and where they were read from", _ref("PaymentVerdicts")),
           extra={400: "Invalid transaction id", 404: "No verdict for that transaction"}),
    _Route("GET", "/api/store", "store", "viewer",
           "The durable store: which one, whether commands are accepted (read-only mode when "
           "not) and how many records of its topics it has yet to write"),
    _Route("GET", "/api/hypotheses", "hypotheses", "viewer", "Open hypotheses",
           query=(_Param("all", {"type": "string", "enum": ["0", "1", "true", "false"]},
                         "Also the recent ones, resolved included."),)),
    _Route("GET", "/api/experiments", "experiments", "viewer",
           "Experiments: latest step and step history", ok=(200, "Experiments", _ARRAY)),
    _Route("GET", "/api/route-health", "route_health", "viewer",
           "Route x issuer health over 1, 5 and 60 minutes of event time"),
    _Route("GET", "/api/routing-policy", "routing_policy", "viewer",
           "Latest routing policy per issuer", ok=(200, "Policies", _ARRAY)),
    _Route("GET", "/api/verdicts", "verdicts", "viewer", "Recent verdicts",
           query=(_LIMIT,), ok=(200, "Verdicts", _ARRAY)),
    _Route("GET", "/api/models", "models", "viewer", "Registry models and the ones in use"),
    _Route("GET", "/api/model-quality", "model_quality", "viewer",
           "The model's rolling AUC, AP and flag precision on labelled traffic, merged over "
           "every scoring partition's window (whichever worker holds it)"),
    _Route("GET", "/metrics", "prometheus", None,
           "Fleet-wide model quality in Prometheus' text format (aggregates only: no card, "
           "case or person)", ok=(200, "Prometheus text exposition", {"type": "string"})),
    _Route("GET", "/api/audit", "audit", "admin", "Recent audit entries", query=(_LIMIT,),
           ok=(200, "Audit entries", _ARRAY)),
    _Route("GET", "/api/events", "events", "viewer",
           "Live read-model updates as server-sent events (heartbeat comment every 15 s)",
           query=(_Param("token", {"type": "string"},
                         "Bearer token, for EventSource which cannot set headers."),),
           ok=(200, "text/event-stream of {type, data}", {"type": "string"})),
)

_COMPONENTS: Record = {
    "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    "schemas": {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"], "properties": {
                "code": {"type": "string"}, "message": {"type": "string"},
                "field": {"type": "string"}}}}},
        "Source": {"type": "string", "enum": ["store", "cache"],
                   "description": "store: the durable store; cache: the API's recent window "
                                  "(the store is down or has not written it yet)"},
        "PaymentVerdicts": {"type": "object",
                            "required": ["transaction_id", "source", "verdict", "history"],
                            "properties": {"transaction_id": {"type": "string"},
                                           "source": _ref("Source"),
                                           "verdict": {"type": "object"},
                                           "history": _ARRAY}},
        "Disputes": {"type": "object", "required": ["source", "disputes"],
                     "properties": {"source": _ref("Source"), "disputes": _ARRAY}},
        "Accepted": {"type": "object", "required": ["command_id"],
                     "properties": {"command_id": {"type": "string"}}},
        "CaseBody": {"type": "object", "required": ["reason"], "additionalProperties": False,
                     "properties": {"reason": {"type": "string", "minLength": 1},
                                    "expected_version": {"type": "integer", "minimum": 0}}},
        "ResolveBody": {"type": "object", "required": ["reason", "resolution"],
                        "additionalProperties": False,
                        "properties": {"reason": {"type": "string", "minLength": 1},
                                       "expected_version": {"type": "integer", "minimum": 0},
                                       "resolution": {"type": "string",
                                                      "enum": list(RESOLUTIONS)}}},
        "DisputeBody": {"type": "object", "required": ["transaction_id", "reason"],
                        "additionalProperties": False,
                        "properties": {"transaction_id": {"type": "string", "minLength": 1},
                                       "reason": {"type": "string", "minLength": 1}}},
        "WhitelistBody": {"type": "object", "required": ["card_token", "until", "reason"],
                          "additionalProperties": False,
                          "properties": {"card_token": {"type": "string", "minLength": 1},
                                         "until": {"type": "string", "format": "date-time"},
                                         "reason": {"type": "string", "minLength": 1}}},
    },
}


def openapi() -> Record:
    """The OpenAPI 3.1 document of ROUTES."""
    paths: Record = {}
    error = {"content": {"application/json": {"schema": _ref("Error")}}}
    for r in ROUTES:
        status, text, schema = r.ok
        media = "text/html" if r.path == "/" else (
            "text/event-stream" if r.handler == "events" else "application/json")
        op: Record = {"operationId": r.handler, "summary": r.summary,
                      "responses": {str(status): {"description": text,
                                                  "content": {media: {"schema": schema}}}}}
        params = [{"name": p.name, "in": "query", "required": False, "schema": p.schema,
                   "description": p.description} for p in r.query]
        for name in re.findall(r"\{(\w+)\}", r.path):
            params.insert(0, {"name": name, "in": "path", "required": True,
                              "schema": {"type": "string"}})
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {"required": True,
                                 "content": {"application/json": {"schema": _ref(r.body)}}}
        codes = dict(r.extra)
        if r.query or r.body:
            codes[400] = "Invalid input; the message names the field"
        if r.role is None:
            op["security"] = []
        else:
            codes[401] = "No or unknown token (audited)"
            if r.role != "viewer":
                codes[403] = f"Needs role {r.role} or above (audited)"
        if r.body is not None:
            codes[503] = ("Read-only mode (the store is down) or the command could not be "
                          "published; the message says which. Retry")
        for code, desc in sorted(codes.items()):
            op["responses"][str(code)] = {"description": desc, **error}
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {"openapi": "3.1.0",
            "info": {"title": "Rakshit Pay analyst API", "version": "1"},
            "security": [{"bearer": []}], "paths": paths, "components": _COMPONENTS}


# -- input helpers ------------------------------------------------------------------------------

def _reject_unknown(given: Any, allowed: set[str], where: str) -> None:
    extra = sorted(set(given) - allowed)
    if extra:
        raise _invalid(extra[0], f"unknown {where}; allowed: {', '.join(sorted(allowed)) or '-'}")


async def _body(request: web.Request, allowed: set[str]) -> Record:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _invalid("body", f"malformed JSON ({exc})") from None
    if not isinstance(body, dict):
        raise _invalid("body", "must be a JSON object")
    _reject_unknown(body, allowed, "field (actor and role come from your token)")
    return body


def _reason(body: Mapping[str, Any]) -> str:
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise _invalid("reason", "required: say why, in words")
    if len(reason) > MAX_REASON:
        raise _invalid("reason", f"at most {MAX_REASON} characters")
    return redact_text(reason.strip())[0]  # a pasted card number must not reach a topic


def _version(body: Mapping[str, Any]) -> int | None:
    value = body.get("expected_version")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _invalid("expected_version", "must be a non-negative integer")
    return value


def _int_query(request: web.Request, name: str, allowed: Any, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _invalid(name, f"must be an integer, got {raw!r}") from None
    if value not in allowed:
        raise _invalid(name, f"out of range, got {value}")
    return value


def _transaction_id(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _invalid("transaction_id", "required: the payment's transaction id")
    if len(value.strip()) > MAX_ID:
        raise _invalid("transaction_id", f"at most {MAX_ID} characters")
    return value.strip()


def _audit_id(fields: Mapping[str, Any]) -> str:
    blob = json.dumps(fields, sort_keys=True, default=str).encode()
    return "aud-" + hashlib.sha256(blob).hexdigest()[:20]


# -- the application ---------------------------------------------------------------------------

class _Api:
    def __init__(self, model: ReadModel, sink: CommandSink, auth: Auth,
                 clock: Callable[[], datetime], heartbeat_s: float,
                 lookups: Lookups) -> None:
        self.model, self.sink, self.auth, self.lookups = model, sink, auth, lookups
        self.clock, self.heartbeat_s = clock, heartbeat_s
        self.streams: set[asyncio.Queue[dict[str, Any]]] = set()
        self.page_bytes = DASHBOARD.read_bytes()
        self.routes = {(r.method, r.path): r for r in ROUTES}
        # A disputed verdict travels in the command exactly as the worker's codec reads it.
        self.codec = make_codec(None)

    # -- guards

    async def _authorize(self, request: web.Request, route: _Route) -> Principal:
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else None
        if token is None and route.handler == "events":
            token = request.query.get("token")  # EventSource cannot set headers
        principal = self.auth.identify(token)
        assert route.role is not None
        if principal is None:
            await self._refusal(request, route, None, "no valid bearer token")
            raise ApiError(401, "UNAUTHENTICATED", "a valid bearer token is required")
        if not principal.at_least(route.role):
            message = f"role {principal.role} may not do this; needs {route.role} or above"
            await self._refusal(request, route, principal, message)
            raise ApiError(403, "FORBIDDEN", message)
        allowed = {p.name for p in route.query}
        _reject_unknown(request.query, allowed, "query parameter")
        return principal

    async def _refusal(self, request: web.Request, route: _Route, who: Principal | None,
                       message: str) -> None:
        now = self.clock()
        fields: Record = {
            "occurred_at": now, "actor": who.user if who else "anonymous",
            "role": who.role.upper() if who else "UNKNOWN",
            "action": _ACTIONS.get(route.handler, "UNKNOWN"), "outcome": "REFUSED",
            "refusal": "FORBIDDEN", "reason": None,
            "detail": f"{request.method} {request.path} refused: {message}",
            "case_id": request.match_info.get("case_id"), "transaction_id": None,
            "card_token": None, "status_before": None, "status_after": None,
            "case_version": None, "resolution": None, "verdict_id": None,
            "override_verdict_id": None, "whitelist_until": None,
        }
        record = {"audit_id": _audit_id({**fields, "nonce": uuid.uuid4().hex}), **fields}
        try:
            await self.sink.audit(record)
        except Exception:  # the refusal stands either way; losing its audit must be loud
            log.exception("could not publish the audit of a refused request: %s", record)

    def wrap(self, route: _Route) -> Handler:
        inner: Handler = getattr(self, route.handler)
        if route.role is None:
            return inner

        async def guarded(request: web.Request) -> web.StreamResponse:
            request[_PRINCIPAL] = await self._authorize(request, route)
            return await inner(request)

        return guarded

    # -- writes

    async def _writable(self) -> None:
        """The read-only mode: refuse commands while the store cannot be written."""
        reason = await self.lookups.refusal()
        if reason is not None:
            raise ApiError(503, "READ_ONLY",
                           f"read-only mode: the store is unavailable ({reason}); commands are "
                           "refused until it is back, so retry later. Nothing is lost: the "
                           "store catches up from the topics, and lookups answer from the "
                           "recent window meanwhile")

    async def _publish(self, request: web.Request, kind: str, checked: bool = False,
                       **fields: Any) -> web.Response:
        """Publish a command once the store can be written (``checked``: already asked)."""
        if not checked:
            await self._writable()
        who = request[_PRINCIPAL]
        record = {"command_id": uuid.uuid4().hex, "command": kind, "actor": who.user,
                  "role": who.role.upper(), "reason": None, "case_id": None,
                  "expected_version": None, "resolution": None, "card_token": None,
                  "until": None, "requested_at": self.clock(), **fields}
        try:
            await self.sink.command(record)
        except Exception:
            log.exception("could not publish case command %s", record["command_id"])
            raise ApiError(503, "UNAVAILABLE",
                           "the command could not be published; try again") from None
        return web.json_response({"command_id": record["command_id"]}, status=202)

    async def _case_command(self, request: web.Request, kind: str) -> web.Response:
        allowed = {"reason", "expected_version"} | ({"resolution"} if kind == "RESOLVE" else set())
        body = await _body(request, allowed)
        fields: Record = {"case_id": request.match_info["case_id"], "reason": _reason(body),
                          "expected_version": _version(body)}
        if kind == "RESOLVE":
            resolution = body.get("resolution")
            if resolution not in RESOLUTIONS:
                raise _invalid("resolution", f"must be one of {', '.join(RESOLUTIONS)}")
            fields["resolution"] = resolution
        return await self._publish(request, kind, **fields)

    async def claim(self, request: web.Request) -> web.Response:
        return await self._case_command(request, "CLAIM")

    async def release(self, request: web.Request) -> web.Response:
        return await self._case_command(request, "RELEASE")

    async def resolve(self, request: web.Request) -> web.Response:
        return await self._case_command(request, "RESOLVE")

    async def whitelist(self, request: web.Request) -> web.Response:
        body = await _body(request, {"card_token", "until", "reason"})
        card = body.get("card_token")
        if not isinstance(card, str) or not card.strip():
            raise _invalid("card_token", "required: the card's vault token")
        digits = card.replace(" ", "").replace("-", "")
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            raise _invalid("card_token", "looks like a card number; send the vault token")
        reason = _reason(body)
        raw = body.get("until")
        try:
            until = datetime.fromisoformat(raw) if isinstance(raw, str) else None
        except ValueError:
            until = None
        if until is None or until.tzinfo is None:
            raise _invalid("until", "required: an ISO 8601 time with a timezone")
        now = self.clock()
        if until <= now:
            raise _invalid("until", "must be in the future")
        if until > now + MAX_WHITELIST:
            raise _invalid("until", f"at most {MAX_WHITELIST.days} days ahead")
        return await self._publish(request, "WHITELIST", card_token=card.strip(), reason=reason,
                                   until=until.astimezone(UTC))

    async def disputes(self, request: web.Request) -> web.Response:
        """The customer's channel (an agent on the phone, a form) files the dispute; the case
        agent opens or reopens the case with a deadline and tells the customer it arrived."""
        body = await _body(request, {"transaction_id", "reason"})
        tx_id = _transaction_id(body.get("transaction_id"))
        reason = _reason(body)
        # Before the lookup: with the store down, an old verdict is not "not found" but "retry".
        await self._writable()
        found, _ = await self.lookups.verdicts(tx_id)
        if not found:
            raise ApiError(404, "NOT_FOUND", f"no verdict for transaction {tx_id!r} within the "
                                             "decision topic's retention")
        verdict = found[0]
        if verdict.get("decision") != "DECLINE":
            raise _invalid("transaction_id", "only a declined payment can be disputed "
                                             f"(this one is {verdict.get('decision')})")
        raw = self.codec.encode("verdict", verdict, topic="verdicts")
        return await self._publish(request, "DISPUTE", checked=True, transaction_id=tx_id,
                                   verdict=raw, reason=reason)

    # -- reads

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(body=self.page_bytes, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})

    async def spec(self, request: web.Request) -> web.Response:
        return web.json_response(openapi())

    async def cases(self, request: web.Request) -> web.Response:
        status = request.query.get("status")
        if status is not None and status not in CASE_STATUSES:
            raise _invalid("status", f"must be one of {', '.join(CASE_STATUSES)}")
        priority = _int_query(request, "priority", SLA, None)
        assignee = request.query.get("assignee")
        if assignee is not None and not assignee.strip():
            raise _invalid("assignee", "must not be blank")
        return web.json_response(self.model.cases(self.clock(), status, priority, assignee))

    async def case(self, request: web.Request) -> web.Response:
        case_id = request.match_info["case_id"]
        found, source = await self.lookups.case(case_id, self.clock())
        if found is None:
            raise ApiError(404, "NOT_FOUND", f"no case {case_id}")
        return web.json_response({**found, "source": source})

    async def verdict(self, request: web.Request) -> web.Response:
        tx_id = _transaction_id(request.match_info["transaction_id"])
        history, source = await self.lookups.verdicts(tx_id)
        if not history:
            raise ApiError(404, "NOT_FOUND", f"no verdict for transaction {tx_id!r}")
        return web.json_response(jsonable({"transaction_id": tx_id, "source": source,
                                           "verdict": history[0], "history": history}))

    async def dispute_list(self, request: web.Request) -> web.Response:
        raw = request.query.get("transaction_id")
        tx_id = None if raw is None else _transaction_id(raw)
        limit = _int_query(request, "limit", range(1, MAX_LIMIT + 1), 100) or 100
        rows, source = await self.lookups.disputes(tx_id, limit)
        return web.json_response(jsonable({"source": source, "disputes": rows}))

    async def store(self, request: web.Request) -> web.Response:
        return web.json_response(jsonable(await self.lookups.status()))

    async def hypotheses(self, request: web.Request) -> web.Response:
        flag = request.query.get("all", "0")
        if flag not in ("0", "1", "true", "false"):
            raise _invalid("all", "must be 0, 1, true or false")
        return web.json_response(self.model.hypotheses(flag in ("1", "true")))

    async def experiments(self, request: web.Request) -> web.Response:
        return web.json_response(self.model.experiments())

    async def route_health(self, request: web.Request) -> web.Response:
        return web.json_response(self.model.route_health())

    async def routing_policy(self, request: web.Request) -> web.Response:
        return web.json_response(self.model.routing_policy())

    async def verdicts(self, request: web.Request) -> web.Response:
        limit = _int_query(request, "limit", range(1, MAX_LIMIT + 1), 100)
        return web.json_response(self.model.verdicts(limit or 100))

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(self.model.models())

    async def model_quality(self, request: web.Request) -> web.Response:
        return web.json_response(jsonable(self.model.quality()))

    async def prometheus(self, request: web.Request) -> web.Response:
        """Gauges computed at scrape time from the merged windows: a ratio like AUC cannot be
        summed over workers, so Prometheus reads it here, where the windows meet."""
        q = self.model.quality()
        lines = []
        for name, key, text in QUALITY_GAUGES:
            value = q.get(key)
            lines.append(f"# HELP {name} {text}\n# TYPE {name} gauge")
            lines.append(f"{name} {float('nan') if value is None else float(value)}")
        return web.Response(text="\n".join(lines) + "\n",
                            content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def audit(self, request: web.Request) -> web.Response:
        limit = _int_query(request, "limit", range(1, MAX_LIMIT + 1), 200)
        return web.json_response(self.model.audit(limit or 200))

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: one ``data:`` line of {type, data} per read-model change."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        queue = self.model.subscribe()
        self.streams.add(queue)
        try:
            await resp.write(b"retry: 3000\n: connected\n\n")
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), self.heartbeat_s)
                except TimeoutError:
                    await resp.write(b": heartbeat\n\n")
                    continue
                if event.get("type") == "_shutdown":
                    break
                line = json.dumps(jsonable(event), separators=(",", ":"), default=str)
                await resp.write(f"data: {line}\n\n".encode())
        except ConnectionResetError:
            pass  # the browser went away
        finally:
            self.streams.discard(queue)
            self.model.unsubscribe(queue)
        return resp

    async def on_shutdown(self, app: web.Application) -> None:
        """End open event streams so shutdown does not wait out their heartbeats."""
        for queue in list(self.streams):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait({"type": "_shutdown"})


QUALITY_GAUGES = (
    ("rakshit_model_auc", "auc", "Rolling AUC ROC on labelled traffic, all scoring partitions"),
    ("rakshit_model_average_precision", "average_precision",
     "Rolling average precision on labelled traffic, all scoring partitions"),
    ("rakshit_model_precision", "precision",
     "Share of flagged (reviewed or declined) labelled payments that were fraud"),
    ("rakshit_model_false_positive_rate", "false_positive_rate",
     "Share of analysts' findings on flagged payments that were genuine"),
    ("rakshit_model_labels_in_windows", "labels_in_windows",
     "Labelled payments in the partitions' rolling windows"),
    ("rakshit_model_partitions_reporting", "partitions",
     "Scoring partitions whose window the API has"),
)


def create_api(model: ReadModel, sink: CommandSink, auth: Auth, *,
               lookups: Lookups | None = None,
               clock: Callable[[], datetime] | None = None,
               heartbeat_s: float = 15.0) -> web.Application:
    """The aiohttp application. ``lookups`` joins the durable store to the read model (without
    it the read model answers alone and commands are never refused for the store's sake);
    ``clock`` (aware UTC datetimes) is for tests."""
    api = _Api(model, sink, auth, clock or (lambda: datetime.now(UTC)), heartbeat_s,
               lookups or Lookups(model))
    app = web.Application(middlewares=[_errors])
    for route in ROUTES:
        app.router.add_route(route.method, route.path, api.wrap(route))
    app.on_shutdown.append(api.on_shutdown)
    return app
