"""WriteBehind (streams/worker/write_behind.py): a working copy of a table that writes back on
flush only."""

from __future__ import annotations

from streams.worker.write_behind import WriteBehind


class CountingTable(dict[str, object]):
    """A dict that counts writes, standing in for a Faust table's changelog."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.writes = 0

    def __setitem__(self, key: str, value: object) -> None:
        self.writes += 1
        super().__setitem__(key, value)


def test_reads_fall_through_and_writes_wait_for_flush() -> None:
    table = CountingTable({"a": 1})
    store = WriteBehind(table)
    assert store["a"] == 1
    for i in range(100):
        store["b"] = i
    assert table.writes == 0 and "b" not in table
    assert store.flush() == 1
    assert table == {"a": 1, "b": 99} and table.writes == 1


def test_deletes_reach_the_table_and_hide_the_key_before_flush() -> None:
    table = CountingTable({"a": 1, "b": 2})
    store = WriteBehind(table)
    del store["a"]
    assert "a" not in store and sorted(store) == ["b"] and len(store) == 1
    store.flush()
    assert table == {"b": 2}


def test_a_restarted_worker_sees_what_was_flushed() -> None:
    table = CountingTable()
    first = WriteBehind(table)
    first["cell"] = {"cusum": 3.5}
    first.flush()
    first["cell"] = {"cusum": 9.0}  # not flushed: lost in a crash, by design
    again = WriteBehind(table)
    assert again["cell"] == {"cusum": 3.5}


def test_flush_if_due_writes_once_per_interval() -> None:
    table: dict[str, int] = {}
    wb = WriteBehind(table, every_s=1.0)
    start = wb._flushed_at
    wb["a"] = 1
    assert wb.flush_if_due(start + 0.5) == 0 and table == {}
    assert wb.flush_if_due(start + 1.0) == 1 and table == {"a": 1}
    wb["b"] = 2
    assert wb.flush_if_due(start + 1.5) == 0 and "b" not in table
    assert wb.flush_if_due(start + 2.1) == 1 and table == {"a": 1, "b": 2}
