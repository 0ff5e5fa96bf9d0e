"""Tokens stored hashed with an expiry, rotation, refusals counted and audited at a bounded rate,
and the event stream's single-use tickets. In-process app, sink that encodes with the Avro
schemas (no broker: the HTTP layer is what is tested here)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from streams.api.routes import API, AUDIT_WINDOW, TICKET_TTL, Auth, TokenStore, create_api
from streams.api.server import tokens_path
from streams.cli import build_parser, tokens_command
from streams.config import Settings
from tests.test_api import NOW, fed_model
from tests.test_api_contract import AvroSink

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


Client = TestClient[web.Request, web.Application]
Scenario = Callable[[Client, AvroSink, Clock], Awaitable[None]]


def run(auth: Auth, scenario: Scenario) -> None:
    async def main() -> None:
        sink, clock = AvroSink(), Clock()
        app = create_api(fed_model(), sink, auth, clock=clock, heartbeat_s=0.1)
        async with TestClient(TestServer(app)) as client:
            await scenario(client, sink, clock)

    asyncio.run(main())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refusal_counts(metrics: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^rakshit_api_refusals_total\{reason="(\w+)",status="\d+"\} (\S+)$', metrics, re.M)}


def counted(audits: list[dict[str, Any]]) -> int:
    """Refusals the audit records stand for (each says how many)."""
    total = 0
    for a in audits:
        match = re.match(r"(\d+) refusals? of ", a["detail"])
        assert match, a["detail"]
        total += int(match.group(1))
    return total


# -- tokens ------------------------------------------------------------------------------------

def test_tokens_are_stored_hashed_and_the_pepper_apart(tmp_path: Path) -> None:
    path = tmp_path / "api-tokens.json"
    store = TokenStore(path)
    token = store.issue("ana", "analyst", timedelta(days=2))
    text = path.read_text()
    secret = token.split("_", 2)[2]
    assert secret not in text and token not in text  # only the id (not secret) and a digest
    (entry,) = json.loads(text)["tokens"]
    assert set(entry) == {"token_id", "user", "role", "salt", "digest", "issued_at",
                          "expires_at", "revoked_at"}
    assert len(entry["digest"]) == 64 and len(entry["salt"]) == 32
    assert path.stat().st_mode & 0o777 == 0o600
    pepper = path.with_name("api-tokens.json.pepper")
    assert pepper.stat().st_mode & 0o777 == 0o600 and pepper.read_text().strip() not in text
    # Another process reading the same files (the API) accepts it; a changed pepper does not.
    assert Auth.from_file(path).identify(token) is not None
    assert TokenStore(path, pepper=b"other").check(token, datetime.now(UTC)) == "unknown_token"
    # Two tokens for the same secret never share a digest (salted).
    other = store.issue("ana", "analyst")
    digests = {e["digest"] for e in json.loads(path.read_text())["tokens"]}
    assert len(digests) == 2 and other != token


def test_expired_revoked_and_unknown_tokens_are_refused_clearly() -> None:
    auth = Auth.in_memory()
    old = auth.store.issue("olga", "viewer", timedelta(hours=1), now=NOW - timedelta(hours=2))
    live = auth.store.issue("vic", "viewer", timedelta(days=1), now=NOW)
    revoked = auth.store.issue("rob", "viewer", timedelta(days=1), now=NOW)
    auth.store.revoke("rob", now=NOW)
    forged = live[:-4] + ("AAAA" if not live.endswith("AAAA") else "BBBB")

    async def scenario(client: Client, sink: AvroSink, clock: Clock) -> None:
        for token, status, code, words in [
                (old, 401, "TOKEN_EXPIRED", "expired"), (revoked, 401, "TOKEN_REVOKED", "revoked"),
                (forged, 401, "UNAUTHENTICATED", "unknown"),
                ("not-a-token", 401, "UNAUTHENTICATED", "not a token"), (live, 200, None, None)]:
            resp = await client.get("/api/cases", headers=bearer(token))
            assert resp.status == status, token
            if code:
                error = (await resp.json())["error"]
                assert error["code"] == code and words in error["message"], error
                assert resp.headers["WWW-Authenticate"] == "Bearer"
        clock.now = NOW + timedelta(days=1)  # the live one's expiry, to the microsecond
        resp = await client.get("/api/cases", headers=bearer(live))
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "TOKEN_EXPIRED"
        counts = refusal_counts(await (await client.get("/metrics")).text())
        assert counts["expired_token"] == 2 and counts["revoked_token"] == 1
        assert counts["unknown_token"] == 1 and counts["malformed_token"] == 1

    run(auth, scenario)


def test_rotation_revokes_the_old_token_in_a_running_api(tmp_path: Path) -> None:
    path = tmp_path / "api-tokens.json"
    first = TokenStore(path).issue("ana", "analyst", timedelta(days=3))

    async def scenario(client: Client, sink: AvroSink, clock: Clock) -> None:
        assert (await client.get("/api/cases", headers=bearer(first))).status == 200
        # Issued and rotated by another process (the CLI), while the API runs.
        second = TokenStore(path).rotate("ana")
        assert second != first
        resp = await client.get("/api/cases", headers=bearer(first))
        assert resp.status == 401 and (await resp.json())["error"]["code"] == "TOKEN_REVOKED"
        assert (await client.get("/api/cases", headers=bearer(second))).status == 200
        resp = await client.post("/api/cases/case-v-9/claim", headers=bearer(second),
                                 json={"reason": "mine"})
        assert resp.status == 202 and sink.commands[-1]["actor"] == "ana"

    run(Auth.from_file(path), scenario)
    records = TokenStore(path).records()
    assert sorted(r.revoked_at is None for r in records) == [False, True]
    assert {r.role for r in records} == {"analyst"}
    # The rotated token keeps the role and the lifetime of the one it replaces.
    newest = max(records, key=lambda r: r.issued_at)
    assert newest.expires_at - newest.issued_at == timedelta(days=3)


def test_the_tokens_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    # Once as operators run it: RAKSHIT_HOME's store by default.
    issued = subprocess.run([sys.executable, "-m", "streams.cli", "tokens", "issue", "--user",
                             "ana", "--role", "analyst", "--ttl-days", "7"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
                            env={**os.environ, "RAKSHIT_HOME": str(home)})
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    settings = replace(Settings.from_env(), home=home)
    store = tokens_path(settings)
    assert re.fullmatch(r"rk_[0-9a-f]{12}_\S+", token) and "shown once" in issued.stderr
    assert token not in store.read_text()
    found = Auth.from_file(store).identify(token)
    assert found is not None and (found.user, found.role) == ("ana", "analyst")
    (record,) = TokenStore(store).records()
    assert record.expires_at - record.issued_at == timedelta(days=7)

    def rakshit(*args: str) -> tuple[int, str]:
        code = tokens_command(settings, build_parser().parse_args(["tokens", *args]))
        return code, capsys.readouterr().out

    code, out = rakshit("rotate", "--user", "ana")
    new = out.strip()
    assert code == 0 and Auth.from_file(store).check(token) == "revoked_token"
    assert Auth.from_file(store).identify(new) is not None
    code, out = rakshit("list")
    assert "revoked" in out and "live" in out and new not in out and token not in out
    assert rakshit("rotate", "--user", "nobody")[0] == 2
    assert rakshit("issue", "--user", "x")[0] == 2  # no role
    assert rakshit("revoke", "--user", "ana")[0] == 0
    assert Auth.from_file(store).check(new) == "revoked_token"


# -- refusals: every one counted, audits bounded -------------------------------------------------

def test_a_refusal_flood_writes_a_bounded_audit_and_counts_every_refusal() -> None:
    auth = Auth.in_memory()
    viewer = auth.store.issue("vic", "viewer", now=NOW)

    async def scenario(client: Client, sink: AvroSink, clock: Clock) -> None:
        # A lone refusal is audited at once, whole.
        assert (await client.get("/api/cases")).status == 401
        (first,) = sink.audits
        assert first["actor"] == "anonymous" and first["outcome"] == "REFUSED"
        assert first["detail"].startswith("1 refusal of GET /api/cases from 127.0.0.1 "
                                          "(missing_token)")
        # A flood: 3 minutes of 200 bad-token requests a minute, on two routes, plus 403s.
        sent = 1
        for minute in range(3):
            for i in range(200):
                clock.now = NOW + timedelta(minutes=minute, seconds=i * 0.29)
                path = "/api/cases" if i % 2 else "/api/verdicts"
                assert (await client.get(path, headers=bearer(f"guess-{i}"))).status == 401
                sent += 1
            for _ in range(20):
                resp = await client.post("/api/cases/case-v-9/claim", headers=bearer(viewer),
                                         json={"reason": "try"})
                assert resp.status == 403
                sent += 1
        clock.now = NOW + timedelta(minutes=4)
        await client.app[API].refusals.flush()
        # Bounded: at most one record per (reason, client, route) per minute, whatever the rate.
        keys: dict[tuple[str, str], list[datetime]] = {}
        for a in sink.audits:
            match = re.match(r"\d+ refusals? of (\S+ \S+) from \S+ \((\w+)\)", a["detail"])
            assert match, a["detail"]
            keys.setdefault((match.group(1), match.group(2)), []).append(a["occurred_at"])
        for times in keys.values():
            assert all(b - a >= AUDIT_WINDOW for a, b in itertools.pairwise(times)), times
        assert len(sink.audits) <= 4 * 4  # 4 keys, each at most once a minute over 4 minutes
        # ...while every refusal is counted: in the audit counts and in the metric.
        assert counted(sink.audits) == sent
        counts = refusal_counts(await (await client.get("/metrics")).text())
        assert counts["malformed_token"] == 600 and counts["forbidden"] == 60
        assert counts["missing_token"] == 1
        forbidden = [a for a in sink.audits if "(forbidden)" in a["detail"]]
        assert forbidden[0]["actor"] == "vic" and forbidden[0]["action"] == "CLAIM"
        assert sum(counted([a]) for a in forbidden) == 60

    run(auth, scenario)


def test_refusals_left_in_a_window_are_audited_at_shutdown() -> None:
    auth = Auth.in_memory()
    sink = AvroSink()

    async def main() -> None:
        app = create_api(fed_model(), sink, auth, clock=lambda: NOW)
        async with TestClient(TestServer(app)) as client:
            for _ in range(5):
                assert (await client.get("/api/audit")).status == 401

    asyncio.run(main())
    assert len(sink.audits) == 2 and counted(sink.audits) == 5


# -- the event stream's tickets ----------------------------------------------------------------

def test_the_event_stream_takes_a_single_use_ticket_never_a_token() -> None:
    auth = Auth.in_memory()
    viewer = auth.store.issue("vic", "viewer", now=NOW)

    async def scenario(client: Client, sink: AvroSink, clock: Clock) -> None:
        # The token in the URL, as the page used to send it: refused, saying what to do.
        resp = await client.get("/api/events", params={"token": viewer})
        assert resp.status == 401
        assert "ticket" in (await resp.json())["error"]["message"]
        assert (await client.post("/api/events/ticket")).status == 401  # the ticket needs a token
        resp = await client.post("/api/events/ticket", headers=bearer(viewer))
        assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
        body = await resp.json()
        assert body["expires_in"] == TICKET_TTL.total_seconds()
        ticket = body["ticket"]
        assert viewer not in ticket
        stream = await client.get("/api/events", params={"ticket": ticket})
        assert stream.status == 200
        assert (await stream.content.readuntil(b"\n\n")).startswith(b"retry:")
        stream.close()
        again = await client.get("/api/events", params={"ticket": ticket})  # single use
        assert again.status == 401 and "used" in (await again.json())["error"]["message"]
        late = (await (await client.post("/api/events/ticket", headers=bearer(viewer))).json()
                )["ticket"]
        clock.now = NOW + TICKET_TTL
        assert (await client.get("/api/events", params={"ticket": late})).status == 401
        assert (await client.get("/api/events")).status == 401
        # A ticket opens the stream only: it is no bearer token anywhere else.
        fresh = (await (await client.post("/api/events/ticket", headers=bearer(viewer))).json()
                 )["ticket"]
        assert (await client.get("/api/cases", headers=bearer(fresh))).status == 401
        assert (await client.get("/api/cases", params={"ticket": fresh},
                                 headers=bearer(viewer))).status == 400
        # A client that can send headers may still use its bearer token.
        stream = await client.get("/api/events", headers=bearer(viewer))
        assert stream.status == 200
        stream.close()
        counts = refusal_counts(await (await client.get("/metrics")).text())
        assert counts["token_in_url"] == 1 and counts["bad_ticket"] == 2
        assert counts["missing_ticket"] == 1

    run(auth, scenario)


def test_the_page_asks_for_a_ticket_and_never_puts_the_token_in_a_url() -> None:
    page = (ROOT / "streams" / "api" / "dashboard.html").read_text()
    assert '"/api/events/ticket"' in page and '"/api/events?ticket="' in page
    assert "?token=" not in page and "encodeURIComponent(token)" not in page


def test_a_store_spoiled_by_hand_keeps_the_tokens_read_before(tmp_path: Path) -> None:
    path = tmp_path / "api-tokens.json"
    store = TokenStore(path)
    token = store.issue("ana", "analyst")
    auth = Auth.from_file(path)
    assert auth.identify(token) is not None
    path.write_text('{"tokens": [{"user": "x"}]}')  # a bad edit: the API keeps serving
    assert auth.identify(token) is not None
    # At start, though, a store that cannot be read (or a plain-text one) stops the API.
    plain = json.dumps({"tv": {"user": "v", "role": "viewer"}})
    for text in ('{"tokens": [{"user": "x"}]}', plain):
        path.write_text(text)
        try:
            Auth.from_file(path)
        except ValueError as exc:
            assert str(path) in str(exc)
        else:
            raise AssertionError(f"started with {text}")
