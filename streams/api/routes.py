"""The analyst and SRE HTTP API: reads from a :class:`ReadModel`, writes only case commands.

The API never changes a case itself. It authenticates the caller, validates the request and
publishes a ``case_command`` for the case worker, the single writer that applies commands in log
order (so two analysts racing for a case are decided by the log, and the worker's own checks still
hold if the API is bypassed). Hence a successful write answers 202 Accepted, not 200.

Who the actor is comes only from the bearer token, never from the body. Tokens are kept hashed,
expire and can be rotated (TokenStore). Every refused attempt (no, unknown, revoked or expired
token, or too low a role) is counted, and audited as a REFUSED entry, because an attempt nobody
was allowed to make is exactly what an auditor wants to see; the audit is aggregated per reason,
client and route each minute (RefusalLedger) so a flood cannot fill a topic kept forever. Invalid
input is answered with a 400 naming the field: nothing a caller sends is silently ignored, unknown
body fields and query parameters included, and every constraint applied is stated in the
document (tests/test_api_contract.py holds the server to it).

Lookups (a payment's verdicts, a case, disputes) go to the durable store through
streams.api.lookup, with the read model as the cache when the store is down; while it is down the
API is read-only: every command is answered 503, naming why, before anything is published.

The route table below is the single source of both the router and the OpenAPI document, so the
document cannot drift from what is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from agents.cases import MAX_WHITELIST, RESOLUTIONS, ROLES, SLA
from schemas.codec import make_codec
from schemas.pan import luhn_valid, redact_text
from streams.api.lookup import Lookups
from streams.api.readmodel import ReadModel, jsonable
from streams.store import StoreUnavailable

__all__ = ["Auth", "CommandSink", "Principal", "RefusalLedger", "TokenStore", "create_api",
           "openapi"]

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

# What a text field may hold, stated in the document as a pattern that means the same to
# ECMA-262 (JSON Schema) and to Python's re: explicit character classes (no \s, whose members
# differ), a lookahead instead of $ (Python's $ also matches before a final newline). Free text
# (a reason) may hold tabs and line breaks; an id or a name none; both need one visible character.
_CTRL_TEXT = "\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f"
_CTRL_LINE = "\\u0000-\\u001f\\u007f-\\u009f"
_BLANK = "\\t\\n\\r \\u00a0\\u1680\\u2000-\\u200b\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"
TEXT_PATTERN = f"^(?![\\s\\S]*[{_CTRL_TEXT}])[\\s\\S]*[^{_CTRL_TEXT}{_BLANK}]"
LINE_PATTERN = f"^(?![\\s\\S]*[{_CTRL_LINE}])[\\s\\S]*[^{_CTRL_LINE}{_BLANK}]"
BLANKS = ("\t\n\r \u00a0\u1680" + "".join(map(chr, range(0x2000, 0x200C)))
          + "\u2028\u2029\u202f\u205f\u3000\ufeff")
_TEXT, _LINE = re.compile(TEXT_PATTERN), re.compile(LINE_PATTERN)
TICKET_TTL = timedelta(seconds=60)
MAX_VERSION = 2**63 - 1  # case versions are Avro longs
_RFC3339 = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
                      r"(\.[0-9]+)?(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))")


# -- authentication ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Principal:
    """An authenticated caller: ``role`` is one of agents.cases.ROLES (lower case)."""

    user: str
    role: str

    def at_least(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


TOKEN_PREFIX = "rk"
DEFAULT_TOKEN_TTL = timedelta(days=30)
_TOKEN = re.compile(r"rk_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})")


@dataclass(frozen=True)
class TokenRecord:
    """One API token as stored: never the token itself, only a salted, peppered SHA-256 digest
    (HMAC-SHA256 keyed with the pepper, over the salt and the token's secret part)."""

    token_id: str
    user: str
    role: str
    salt: str
    digest: str
    issued_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None

    def as_json(self) -> Record:
        return {"token_id": self.token_id, "user": self.user, "role": self.role,
                "salt": self.salt, "digest": self.digest,
                "issued_at": self.issued_at.isoformat(), "expires_at": self.expires_at.isoformat(),
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None}

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> TokenRecord:
        revoked = entry.get("revoked_at")
        record = cls(str(entry["token_id"]), str(entry["user"]), str(entry["role"]),
                     str(entry["salt"]), str(entry["digest"]),
                     datetime.fromisoformat(entry["issued_at"]),
                     datetime.fromisoformat(entry["expires_at"]),
                     datetime.fromisoformat(revoked) if revoked else None)
        if record.role not in ROLES or not record.user.strip():
            raise ValueError(f"token {record.token_id}: bad user or role")
        return record


def _digest(pepper: bytes, salt: str, secret: str) -> str:
    return hmac.new(pepper, bytes.fromhex(salt) + secret.encode(), hashlib.sha256).hexdigest()


class TokenStore:
    """API tokens, stored hashed with an expiry, a user and a role.

    A token reads ``rk_<id>_<secret>``: the id (not secret) finds its record, the secret is checked
    against the digest in constant time. The pepper is kept apart from the records (its own 0600
    file, or ``pepper`` given), so a copy of the token file alone reveals nothing usable. With a
    ``path`` the records live in that JSON file (0600, replaced atomically under a lock), and the
    file is read again whenever it changes, so a token issued or rotated by ``rakshit tokens``
    works, or stops working, in a running API at once.
    """

    def __init__(self, path: Path | None = None, pepper: bytes | None = None) -> None:
        self.path = path
        if pepper is None:
            pepper = self._pepper_file() if path is not None else secrets.token_bytes(32)
        self.pepper = pepper
        self._records: dict[str, TokenRecord] = {}
        self._seen: tuple[int, int, int] | None = None
        self._load()

    # -- the file

    def _pepper_file(self) -> bytes:
        assert self.path is not None
        path = self.path.with_name(self.path.name + ".pepper")
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32))
        return bytes.fromhex(path.read_text().strip())

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._records, self._seen = {}, None
            return
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen == self._seen:
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
            entries = data.get("tokens") if isinstance(data, dict) else None
            if not isinstance(entries, list):
                raise ValueError(f"{self.path}: expected {{\"tokens\": [...]}} of hashed "
                                 "tokens (plain-text token files are no longer read: move it "
                                 "away and issue tokens with `rakshit tokens issue`)")
            records = {r.token_id: r for r in map(TokenRecord.from_json, entries)}
        except (ValueError, KeyError, TypeError) as exc:
            if self._seen is None and not self._records:
                raise ValueError(f"{self.path}: {exc}") from None  # at start: refuse to run
            # Later (a hand edit gone wrong): keep the tokens known so far, and say so.
            log.error("token store %s unreadable (%s); keeping the %d tokens read before",
                      self.path, exc, len(self._records))
            self._seen = seen
            return
        self._records, self._seen = records, seen

    def _update(self, change: Callable[[dict[str, TokenRecord]], Any]) -> Any:
        """Apply ``change`` to the records read afresh, under the lock, and write them back."""
        if self.path is None:
            return change(self._records)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        with open(lock, "a") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            self._seen = None
            self._load()
            result = change(self._records)
            tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump({"tokens": [r.as_json() for r in self._records.values()]}, out,
                          indent=1)
            os.replace(tmp, self.path)
            self._seen = None
            self._load()
        return result

    # -- issuing

    def issue(self, user: str, role: str, ttl: timedelta = DEFAULT_TOKEN_TTL,
              now: datetime | None = None) -> str:
        """A new token for ``user`` with ``role``, valid for ``ttl``; the only time it is shown."""
        if not isinstance(user, str) or not user.strip() or len(user) > MAX_ID:
            raise ValueError("user must be a non-blank name")
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        if ttl <= timedelta(0):
            raise ValueError("ttl must be positive")
        token, record = self._new(user.strip(), role, ttl, now or datetime.now(UTC))

        def add(records: dict[str, TokenRecord]) -> None:
            records[record.token_id] = record

        self._update(add)
        return token

    def _new(self, user: str, role: str, ttl: timedelta,
             now: datetime) -> tuple[str, TokenRecord]:
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(24)
        salt = secrets.token_hex(16)
        return (f"{TOKEN_PREFIX}_{token_id}_{secret}",
                TokenRecord(token_id, user, role, salt, _digest(self.pepper, salt, secret), now,
                            now + ttl))

    def revoke(self, user: str, now: datetime | None = None) -> list[TokenRecord]:
        """Revoke every live token of ``user``; returns the records as they were."""
        at = now or datetime.now(UTC)

        def revoke(records: dict[str, TokenRecord]) -> list[TokenRecord]:
            live = [r for r in records.values() if r.user == user and r.revoked_at is None]
            for r in live:
                records[r.token_id] = replace(r, revoked_at=at)
            return live

        revoked: list[TokenRecord] = self._update(revoke)
        return revoked

    def rotate(self, user: str, ttl: timedelta | None = None,
               now: datetime | None = None) -> str:
        """A new token for ``user`` with the role (and, unless ``ttl``, the lifetime) of their
        newest token; every older one is revoked in the same write."""
        at = now or datetime.now(UTC)

        def swap(records: dict[str, TokenRecord]) -> str:
            mine = sorted((r for r in records.values() if r.user == user),
                          key=lambda r: r.issued_at)
            if not mine:
                raise LookupError(f"no token for user {user!r}; issue one first")
            newest = mine[-1]
            token, record = self._new(user, newest.role,
                                      ttl or (newest.expires_at - newest.issued_at), at)
            for r in mine:
                if r.revoked_at is None:
                    records[r.token_id] = replace(r, revoked_at=at)
            records[record.token_id] = record
            return token

        token: str = self._update(swap)
        return token

    def records(self) -> list[TokenRecord]:
        self._load()
        return sorted(self._records.values(), key=lambda r: (r.user, r.issued_at))

    # -- checking

    def check(self, token: str | None, now: datetime) -> Principal | str:
        """The token's principal, or why not: missing, malformed, unknown, revoked, expired."""
        if not token:
            return "missing_token"
        match = _TOKEN.fullmatch(token)
        if match is None:
            return "malformed_token"
        self._load()
        record = self._records.get(match.group(1))
        # Compare even for an unknown id, so timing says nothing about which ids exist.
        salt, digest = (record.salt, record.digest) if record else ("00" * 16, "0" * 64)
        if not hmac.compare_digest(_digest(self.pepper, salt, match.group(2)), digest) \
                or record is None:
            return "unknown_token"
        if record.revoked_at is not None:
            return "revoked_token"
        if now >= record.expires_at:
            return "expired_token"
        return Principal(record.user, record.role)


class Auth:
    """Bearer tokens from a :class:`TokenStore`; roles are ordered viewer < analyst < admin."""

    def __init__(self, store: TokenStore) -> None:
        self.store = store

    @classmethod
    def from_file(cls, path: str | Path) -> Auth:
        return cls(TokenStore(Path(path)))

    @classmethod
    def in_memory(cls) -> Auth:
        """Tokens held in this process only (tests): issue them with ``auth.store.issue``."""
        return cls(TokenStore())

    def check(self, token: str | None, now: datetime | None = None) -> Principal | str:
        return self.store.check(token, now or datetime.now(UTC))

    def identify(self, token: str | None, now: datetime | None = None) -> Principal | None:
        found = self.check(token, now)
        return found if isinstance(found, Principal) else None


_PRINCIPAL = web.RequestKey("principal", Principal)
API: web.AppKey[_Api] = web.AppKey("api")


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
        resp = ApiError(exc.status, code, f"{request.method} {request.path}: {exc.reason}"
                        ).response()
        if "Allow" in exc.headers:  # a 405 says which methods the path has
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp


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


_SAYS = "at least one visible character; no control characters"
LINE: Record = {"type": "string", "minLength": 1, "maxLength": MAX_ID, "pattern": LINE_PATTERN,
                "description": f"An id or a name: {_SAYS}, tabs and line breaks included; "
                               "surrounding blanks are ignored"}
TEXT: Record = {"type": "string", "minLength": 1, "maxLength": MAX_REASON,
                "pattern": TEXT_PATTERN,
                "description": f"Free text: {_SAYS} other than tabs and line breaks; card "
                               "numbers in it are masked"}
_VERSION: Record = {"type": "integer", "minimum": 0, "maximum": MAX_VERSION,
                    "description": "The case version you saw; another current version refuses "
                                   "the command as a conflict"}


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
                  _Param("assignee", LINE, "Analyst holding the case.")),
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
           query=(_Param("transaction_id", LINE, "Of this payment only."),
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
    _Route("POST", "/api/events/ticket", "ticket", "viewer",
           "A single-use ticket for opening the event stream, valid "
           f"{int(TICKET_TTL.total_seconds())} s (EventSource cannot send a bearer header, "
           "and a token in a URL ends up in logs and history)",
           ok=(200, "The ticket", _ref("Ticket"))),
    _Route("GET", "/api/events", "events", "viewer",
           "Live read-model updates as server-sent events (heartbeat comment every 15 s). "
           "Authenticates with a bearer header or ?ticket= from POST /api/events/ticket; a token "
           "in the URL is refused",
           query=(_Param("ticket", {"type": "string", "minLength": 1, "maxLength": MAX_ID},
                         "A ticket from POST /api/events/ticket: single use, short-lived."),),
           ok=(200, "text/event-stream of {type, data}", {"type": "string"})),
)

_COMPONENTS: Record = {
    "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                        "streamTicket": {"type": "apiKey", "in": "query", "name": "ticket",
                                         "description": "GET /api/events only: a single-use "
                                                        "ticket from POST /api/events/ticket"}},
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
        "Ticket": {"type": "object", "required": ["ticket", "expires_at"],
                   "properties": {"ticket": {"type": "string"},
                                  "expires_at": {"type": "string", "format": "date-time"},
                                  "expires_in": {"type": "integer"}}},
        "CaseBody": {"type": "object", "required": ["reason"], "additionalProperties": False,
                     "properties": {"reason": TEXT, "expected_version": _VERSION}},
        "ResolveBody": {"type": "object", "required": ["reason", "resolution"],
                        "additionalProperties": False,
                        "properties": {"reason": TEXT, "expected_version": _VERSION,
                                       "resolution": {"type": "string",
                                                      "enum": list(RESOLUTIONS)}}},
        "DisputeBody": {"type": "object", "required": ["transaction_id", "reason"],
                        "additionalProperties": False,
                        "properties": {"transaction_id": {
                            **LINE, "x-rule": "a declined payment's: disputing any other "
                                              "decision is a 400 naming transaction_id"},
                            "reason": TEXT}},
        "WhitelistBody": {"type": "object", "required": ["card_token", "until", "reason"],
                          "additionalProperties": False,
                          "properties": {"card_token": {
                              **LINE, "x-rule": "the card's vault token: 13 to 19 digits that "
                                                "pass the Luhn check look like a card number "
                                                "and are a 400"},
                              "until": {"type": "string", "format": "date-time",
                                        "x-rule": "in the future and at most "
                                                  f"{MAX_WHITELIST.days} days ahead, else a "
                                                  "400 naming until"},
                              "reason": TEXT}},
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
            params.insert(0, {"name": name, "in": "path", "required": True, "schema": LINE})
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
            if r.handler == "events":
                op["security"] = [{"bearer": []}, {"streamTicket": []}]
            codes[401] = ("No, unknown, revoked or expired token, or a bad stream ticket "
                          "(counted, and audited at most once a minute per reason, client and "
                          "route)")
            if r.role != "viewer":
                codes[403] = f"Needs role {r.role} or above (counted and audited as 401s)"
        if r.body is not None:
            codes[503] = ("Read-only mode (the store is down) or the command could not be "
                          "published; the message says which. Retry")
        for code, desc in sorted(codes.items()):
            op["responses"][str(code)] = {"description": desc, **error}
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {"openapi": "3.1.0",
            "info": {"title": "Rakshit Pay analyst API", "version": "1",
                     "description": "Unknown body fields and query parameters are a 400 naming "
                                    "them. Strings are Unicode text: an unpaired surrogate is a "
                                    "400. A property marked x-rule has a rule JSON Schema cannot "
                                    "state; breaking it is a 400 naming the property. A method "
                                    "a path does not list is a 405 with an Allow header."},
            "security": [{"bearer": []}], "paths": paths, "components": _COMPONENTS}


# -- input helpers ------------------------------------------------------------------------------

def _reject_unknown(given: Any, allowed: set[str], where: str) -> None:
    extra = sorted(set(given) - allowed)
    if extra:
        raise _invalid(extra[0], f"unknown {where}; allowed: {', '.join(sorted(allowed)) or '-'}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unicode(name: str, value: Any) -> None:
    """Refuse unpaired surrogates (JSON can escape them; no topic can carry them)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _invalid(name, "not valid Unicode (an unpaired surrogate)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _unicode(name, key)
            _unicode(key, item)
    elif isinstance(value, list):
        for item in value:
            _unicode(name, item)


async def _body(request: web.Request, allowed: set[str]) -> Record:
    raw = await request.read()
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _invalid("body", f"malformed JSON ({str(exc)[:200]})") from None
    if not isinstance(body, dict):
        raise _invalid("body", "must be a JSON object")
    _unicode("body", body)
    _reject_unknown(body, allowed, "field (actor and role come from your token)")
    return body


def _line(name: str, value: Any) -> str:
    """An id or a name as LINE documents it, without its surrounding blanks."""
    if not isinstance(value, str) or not _LINE.match(value):
        raise _invalid(name, f"required: {_SAYS}")
    if len(value) > MAX_ID:
        raise _invalid(name, f"at most {MAX_ID} characters")
    return value.strip(BLANKS)


def _reason(body: Mapping[str, Any]) -> str:
    reason = body.get("reason")
    if not isinstance(reason, str) or not _TEXT.match(reason):
        raise _invalid("reason", f"required: say why, in words ({_SAYS} but tabs and line "
                                 "breaks)")
    if len(reason) > MAX_REASON:
        raise _invalid("reason", f"at most {MAX_REASON} characters")
    return redact_text(reason.strip(BLANKS))[0]  # a pasted card number must not reach a topic


def _version(body: Mapping[str, Any]) -> int | None:
    if "expected_version" not in body:
        return None
    value = body["expected_version"]
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON Schema's integer: 3.0 is one
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_VERSION:
        raise _invalid("expected_version", f"must be an integer from 0 to {MAX_VERSION} "
                                           "(leave it out rather than send null)")
    return value


def _time(name: str, value: Any) -> datetime:
    """An RFC 3339 date-time (JSON Schema's format), as an aware datetime."""
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise _invalid(name, "required: an RFC 3339 time with a timezone, e.g. "
                             "2025-03-05T00:00:00Z")
    y, mo, d, h, mi, sec, frac, _, sign, oh, om = match.groups()
    try:
        if int(sec) > 60 or int(oh or 0) > 23 or int(om or 0) > 59:
            raise ValueError("out of range")
        offset = timedelta(0) if sign is None else (1 if sign == "+" else -1) * timedelta(
            hours=int(oh), minutes=int(om))
        micro = int((frac or ".0")[1:7].ljust(6, "0"))
        local = datetime(int(y), int(mo), int(d), int(h), int(mi), min(int(sec), 59), micro,
                         tzinfo=timezone(offset))
        return local.astimezone(UTC)
    except (ValueError, OverflowError):
        raise _invalid(name, f"not a time UTC can hold: {value!r}") from None


def _int_query(request: web.Request, name: str, allowed: Any, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"-?[0-9]{1,20}", raw):
        raise _invalid(name, f"must be an integer, got {raw[:50]!r}")
    value = int(raw)
    if value not in allowed:
        raise _invalid(name, f"out of range, got {value}")
    return value


def _transaction_id(value: Any) -> str:
    return _line("transaction_id", value)


def _audit_id(fields: Mapping[str, Any]) -> str:
    blob = json.dumps(fields, sort_keys=True, default=str).encode()
    return "aud-" + hashlib.sha256(blob).hexdigest()[:20]


# -- refusals: counted always, audited at a bounded rate ------------------------------------------

REFUSALS: dict[str, tuple[int, str, str]] = {  # reason -> status, error code, message
    "missing_token": (401, "UNAUTHENTICATED",
                      "a valid bearer token is required (Authorization: Bearer <token>)"),
    "malformed_token": (401, "UNAUTHENTICATED", "that is not a token this API issues"),
    "unknown_token": (401, "UNAUTHENTICATED", "unknown bearer token"),
    "revoked_token": (401, "TOKEN_REVOKED",
                      "the bearer token was revoked (rotated): use the new one"),
    "expired_token": (401, "TOKEN_EXPIRED",
                      "the bearer token has expired: ask an admin for a new one "
                      "(rakshit tokens rotate --user <you>)"),
    "token_in_url": (401, "UNAUTHENTICATED",
                     "a token in a URL is refused: POST /api/events/ticket with your bearer "
                     "header, then open /api/events?ticket=<ticket>"),
    "missing_ticket": (401, "UNAUTHENTICATED",
                       "the event stream needs ?ticket= from POST /api/events/ticket (or a "
                       "bearer header)"),
    "bad_ticket": (401, "UNAUTHENTICATED",
                   "unknown, used or expired stream ticket: get a new one from "
                   "POST /api/events/ticket"),
    "forbidden": (403, "FORBIDDEN", ""),
}
AUDIT_WINDOW = timedelta(minutes=1)
REFUSAL_FLUSH_S = 5.0
MAX_REFUSAL_KEYS = 1_024  # distinct (reason, client, route) windows held; beyond: client "other"


@dataclass
class _Window:
    last_audit: datetime
    pending: int = 0
    first: datetime | None = None
    last: datetime | None = None
    actors: set[str] = field(default_factory=set)
    example: Record = field(default_factory=dict)


class RefusalLedger:
    """Every refused request (401, 403) is counted by reason (``rakshit_api_refusals_total``);
    its audit is aggregated: at most one record per (reason, client address, route) per
    AUDIT_WINDOW, carrying how many refusals it stands for, so a flood of bad tokens writes a
    bounded number of records into an audit topic kept forever. The first refusal of a quiet key
    is audited at once; the ones after it, within the window, by ``flush`` once the window has
    passed (every few seconds by the app, and at shutdown)."""

    def __init__(self, sink: CommandSink, clock: Callable[[], datetime]) -> None:
        self.sink, self.clock = sink, clock
        self.counts: Counter[str] = Counter({reason: 0 for reason in REFUSALS})
        self.audited = 0
        self._windows: dict[tuple[str, str, str], _Window] = {}

    async def refused(self, request: web.Request, route: _Route, who: Principal | None,
                      reason: str, message: str) -> None:
        self.counts[reason] += 1
        now = self.clock()
        client = request.remote or "unknown"
        key = (reason, client, f"{route.method} {route.path}")
        if key not in self._windows and len(self._windows) >= MAX_REFUSAL_KEYS:
            key = (reason, "other", key[2])
        window = self._windows.get(key)
        actor = who.user if who else "anonymous"
        example: Record = {"route": route, "who": who, "message": message,
                           "case_id": request.match_info.get("case_id")}
        if window is not None and now - window.last_audit < AUDIT_WINDOW:
            window.pending += 1
            window.first = window.first or now
            window.last = now
            window.actors.add(actor)
            window.example = example
            return
        count = 1 + (window.pending if window else 0)
        first = window.first if window and window.first else now
        actors = (window.actors if window else set()) | {actor}
        self._windows[key] = _Window(last_audit=now)
        await self._audit(key, count, first, now, actors, example, now)

    async def flush(self, force: bool = False) -> None:
        """Audit the windows that have passed (all of them when ``force``), forget idle ones."""
        now = self.clock()
        for key, window in list(self._windows.items()):
            due = force or now - window.last_audit >= AUDIT_WINDOW
            if window.pending and due:
                assert window.first is not None and window.last is not None
                self._windows[key] = _Window(last_audit=now)
                await self._audit(key, window.pending, window.first, window.last,
                                  window.actors, window.example, now)
            elif not window.pending and now - window.last_audit >= AUDIT_WINDOW:
                del self._windows[key]

    async def _audit(self, key: tuple[str, str, str], count: int, first: datetime,
                     last: datetime, actors: set[str], example: Record, at: datetime) -> None:
        reason, client, where = key
        route: _Route = example["route"]
        who: Principal | None = example["who"]
        many = count > 1
        named = sorted(actors)
        detail = (f"{count} refusal{'s' if many else ''} of {where} from {client} ({reason}) "
                  f"between {first.isoformat()} and {last.isoformat()}"
                  + (f"; actors: {', '.join(named[:5])}{' ...' if len(named) > 5 else ''}"
                     if len(named) > 1 else "") + f": {example['message']}")
        fields: Record = {
            "occurred_at": at, "actor": named[0] if len(named) == 1 else "several",
            "role": who.role.upper() if who and len(named) == 1 else "UNKNOWN",
            "action": _ACTIONS.get(route.handler, "UNKNOWN"), "outcome": "REFUSED",
            "refusal": "FORBIDDEN", "reason": None, "detail": detail,
            "case_id": None if many else example["case_id"], "transaction_id": None,
            "card_token": None, "status_before": None, "status_after": None,
            "case_version": None, "resolution": None, "verdict_id": None,
            "override_verdict_id": None, "whitelist_until": None,
        }
        record = {"audit_id": _audit_id({**fields, "nonce": uuid.uuid4().hex}), **fields}
        self.audited += 1
        try:
            await self.sink.audit(record)
        except Exception:  # the refusal stands either way; losing its audit must be loud
            log.exception("could not publish the audit of refused requests: %s", record)


class StreamTickets:
    """Single-use, short-lived tickets for the event stream, held in memory (hashed)."""

    MAX = 10_000

    def __init__(self) -> None:
        self._live: dict[str, tuple[Principal, datetime]] = {}

    @staticmethod
    def _key(ticket: str) -> str:
        return hashlib.sha256(ticket.encode("utf-8", "replace")).hexdigest()

    def issue(self, who: Principal, now: datetime) -> tuple[str, datetime]:
        for key, (_, expires) in list(self._live.items()):
            if expires <= now:
                del self._live[key]
        while len(self._live) >= self.MAX:
            del self._live[next(iter(self._live))]
        ticket, expires = secrets.token_urlsafe(24), now + TICKET_TTL
        self._live[self._key(ticket)] = (who, expires)
        return ticket, expires

    def redeem(self, ticket: str | None, now: datetime) -> Principal | str:
        if not ticket:
            return "missing_ticket"
        found = self._live.pop(self._key(ticket), None)
        if found is None or now >= found[1]:
            return "bad_ticket"
        return found[0]


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
        self.refusals = RefusalLedger(sink, clock)
        self.tickets = StreamTickets()
        # A disputed verdict travels in the command exactly as the worker's codec reads it.
        self.codec = make_codec(None)

    # -- guards

    async def _authorize(self, request: web.Request, route: _Route) -> Principal:
        assert route.role is not None
        header = request.headers.get("Authorization")
        now = self.clock()
        found: Principal | str
        if route.handler == "events" and header is None:
            # EventSource cannot set headers; a ticket stands in for the token, never the token.
            found = ("token_in_url" if "token" in request.query
                     else self.tickets.redeem(request.query.get("ticket"), now))
        else:
            token = header[7:].strip() if header and header[:7].lower() == "bearer " else None
            found = self.auth.check(token, now)
        if isinstance(found, str):
            status, code, message = REFUSALS[found]
            await self.refusals.refused(request, route, None, found, message)
            raise ApiError(status, code, message)
        if not found.at_least(route.role):
            message = f"role {found.role} may not do this; needs {route.role} or above"
            await self.refusals.refused(request, route, found, "forbidden", message)
            raise ApiError(403, "FORBIDDEN", message)
        allowed = {p.name for p in route.query}
        _reject_unknown(request.query, allowed, "query parameter")
        return found

    def wrap(self, route: _Route) -> Handler:
        inner: Handler = getattr(self, route.handler)
        if route.role is None:
            async def public(request: web.Request) -> web.StreamResponse:
                _reject_unknown(request.query, {p.name for p in route.query}, "query parameter")
                return await inner(request)

            return public

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
        fields: Record = {"case_id": _line("case_id", request.match_info["case_id"]),
                          "reason": _reason(body),
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
        card = _line("card_token", body.get("card_token"))
        digits = card.replace(" ", "").replace("-", "")
        if 13 <= len(digits) <= 19 and digits.isascii() and digits.isdigit() \
                and luhn_valid(digits):
            raise _invalid("card_token", "looks like a card number; send the vault token")
        reason = _reason(body)
        until = _time("until", body.get("until"))
        now = self.clock()
        if until <= now:
            raise _invalid("until", "must be in the future")
        if until > now + MAX_WHITELIST:
            raise _invalid("until", f"at most {MAX_WHITELIST.days} days ahead")
        return await self._publish(request, "WHITELIST", card_token=card, reason=reason,
                                   until=until)

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
        raw = request.query.get("assignee")
        assignee = None if raw is None else _line("assignee", raw)
        return web.json_response(self.model.cases(self.clock(), status, priority, assignee))

    async def case(self, request: web.Request) -> web.Response:
        case_id = _line("case_id", request.match_info["case_id"])
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
        lines.append("# HELP rakshit_api_refusals_total Requests the API refused for want of a "
                     "valid credential (401) or role (403), by reason\n"
                     "# TYPE rakshit_api_refusals_total counter")
        for reason, n in sorted(self.refusals.counts.items()):
            lines.append(f'rakshit_api_refusals_total{{reason="{reason}",'
                         f'status="{REFUSALS[reason][0]}"}} {n}')
        lines.append("# HELP rakshit_api_refusal_audits_total Audit records written for refused "
                     "requests (aggregated per reason, client and route each minute)\n"
                     "# TYPE rakshit_api_refusal_audits_total counter")
        lines.append(f"rakshit_api_refusal_audits_total {self.refusals.audited}")
        return web.Response(text="\n".join(lines) + "\n",
                            content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def audit(self, request: web.Request) -> web.Response:
        limit = _int_query(request, "limit", range(1, MAX_LIMIT + 1), 200)
        return web.json_response(self.model.audit(limit or 200))

    async def ticket(self, request: web.Request) -> web.Response:
        """A stream ticket for the caller, so the page never puts its token in a URL."""
        ticket, expires = self.tickets.issue(request[_PRINCIPAL], self.clock())
        return web.json_response({"ticket": ticket, "expires_at": expires.isoformat(),
                                  "expires_in": int(TICKET_TTL.total_seconds())},
                                 headers={"Cache-Control": "no-store"})

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

    async def audit_refusals(self, app: web.Application) -> AsyncIterator[None]:
        """Audit the refusals aggregated in passed windows every few seconds; the rest at exit."""
        async def loop() -> None:
            while True:
                await asyncio.sleep(REFUSAL_FLUSH_S)
                await self.refusals.flush()

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self.refusals.flush(force=True)


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
        # Any text but a slash fills a path parameter ({ and } included; aiohttp's default
        # leaves them out), so every value the document allows reaches the handler.
        path = re.sub(r"\{(\w+)\}", r"{\1:[^/]+}", route.path)
        app.router.add_route(route.method, path, api.wrap(route))
    app.on_shutdown.append(api.on_shutdown)
    app.cleanup_ctx.append(api.audit_refusals)
    app[API] = api
    return app
