"""The README states what the code does: topics table, commands and CI entry point."""

from __future__ import annotations

import re

from streams.config import REPO_ROOT
from streams.topics import TOPICS, topic_name

README = (REPO_ROOT / "README.md").read_text()


def _retention(ms: int) -> str:
    return "forever" if ms < 0 else f"{ms // 86_400_000} days"


def test_topics_table_matches_the_topic_list() -> None:
    rows = {m.group(1): [c.strip() for c in m.group(2).split("|")]
            for m in re.finditer(r"^\| (rakshit\.[\w.-]+) \|(.*)\|$", README, re.M)}
    assert set(rows) == {topic_name(s.topic) for s in TOPICS}
    for spec in TOPICS:
        schema, key, partitions, retention, cleanup = rows[topic_name(spec.topic)]
        assert schema == spec.schema
        assert key == spec.key
        assert partitions == (str(spec.partitions) if spec.partitions else "default")
        assert retention == _retention(spec.retention_ms)
        assert cleanup == ("compact" if spec.compacted else "delete")


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test " in README and "make demo " in README
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)


def test_threat_model_table_matches_the_acls() -> None:
    """README, "Threat model": what each principal writes and reads is streams.admin.ACLS."""
    from streams.admin import ACLS, READ, WRITE

    rows = {m.group(1): (m.group(2), m.group(3))
            for m in re.finditer(r"^\| (gateway|worker|api) \| (.*) \| (.*) \|$", README, re.M)}
    assert set(rows) == set(ACLS)
    for principal, acl in ACLS.items():
        writes, reads = ({t for t in re.findall(r"`([\w-]+)`", cell)} for cell in rows[principal])
        assert writes == {t.value for t, ops in acl.items() if WRITE in ops.split(",")}, principal
        assert reads == {t.value for t, ops in acl.items() if READ in ops.split(",")}, principal
