"""The banks' state (moderation/state/banks.py), against both backends: a SQLite file and a real PostgreSQL.

`store_location` is a SQLite path or the URL of a fresh PostgreSQL database (tests/conftest.py
starts the server; under CI=true a missing PostgreSQL fails the run).
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import numpy as np
import pytest

from moderation.state.banks import BankExists, BankNotFound, BankStore, ImportRejected, NewEntry, StoredEntry
from moderation.state.records import StoreError
from moderation.state.store import open_store


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def banks(store_location: str):  # noqa: ANN201
    with open_store(store_location) as store:
        yield BankStore(store)


def pdq(i: int) -> str:
    return f"{i:064x}"


def md5(i: int) -> str:
    return f"{i:032x}"


def rows(bank: BankStore, name: str) -> set[tuple[str, str, str | bytes]]:
    return {(e.content_id, e.signal_type, e.value) for e in bank.load_bank_entries(name)}


def test_create_list_settings_and_disable_without_deleting(banks: BankStore) -> None:
    made = banks.create_bank("known-bad", by="alice", note="from the hotline")
    assert (made.enabled, made.pdq_max_distance, made.pdq_min_quality, made.embedding_min_cosine, made.matching_ratio) == (True, 31, 50, None, 1.0)
    assert made.created_by == "alice" and made.note == "from the hotline"
    banks.create_bank("spam", by="bob", matching_ratio=0.1, pdq_max_distance=20)
    assert [b.name for b in banks.list_banks()] == ["known-bad", "spam"]
    with pytest.raises(ValueError, match="bank 'spam' already exists"):
        banks.create_bank("spam", by="bob")
    with pytest.raises(ValueError, match="matching_ratio is 0 to 1; got 1.5"):
        banks.create_bank("x", by="bob", matching_ratio=1.5)
    with pytest.raises(ValueError, match="names who made it"):
        banks.create_bank("x", by="")

    banks.add_entries("known-bad", [NewEntry("c1", "pdq", pdq(1)), NewEntry("c2", "md5", md5(2))], by="alice")
    off = banks.set_enabled("known-bad", False, by="carol", reason="false positives")
    assert not off.enabled and off.version > made.version
    assert banks.count_entries("known-bad") == {"pdq": 1, "md5": 1}  # disabled, not emptied
    assert banks.set_enabled("known-bad", True, by="carol").enabled

    changed = banks.update_settings("spam", by="dave", pdq_min_quality=70, embedding_min_cosine=0.92)
    assert (changed.pdq_min_quality, changed.embedding_min_cosine, changed.matching_ratio, changed.pdq_max_distance) == (70, 0.92, 0.1, 20)
    with pytest.raises(ValueError, match="pdq_max_distance is 0 to 255 bits; got 300"):
        banks.update_settings("spam", by="dave", pdq_max_distance=300)
    with pytest.raises(ValueError, match="no bank named 'nope'"):
        banks.set_enabled("nope", False, by="dave")
    assert banks.get_bank("spam").pdq_max_distance == 20  # the refused change left it as it was


def test_add_find_remove_and_duplicates_are_skipped_and_counted(banks: BankStore) -> None:
    banks.create_bank("b", by="alice")
    first = banks.add_entries("b", [NewEntry("c1", "pdq", pdq(1).upper(), quality=90), NewEntry("c1", "md5", md5(1)), NewEntry("c2", "sha256", "ab" * 32)], by="alice")
    assert (first.added, first.skipped) == (3, 0)
    again = banks.add_entries("b", [NewEntry("c9", "pdq", " " + pdq(1) + " "), NewEntry("c3", "md5", md5(3)), NewEntry("c4", "md5", md5(3))], by="bob")
    assert (again.added, again.skipped) == (1, 2)  # the same PDQ in other case and blanks, and md5(3) twice in one call
    assert [(e.signal_type, e.value, e.quality) for e in banks.find_content("b", "c1")] == [("pdq", pdq(1), 90), ("md5", md5(1), None)]
    assert banks.find_content("b", "c9") == []  # the first content id of a value stays

    assert banks.remove_entries("b", by="carol", content_ids=["c1"]) == 2
    assert banks.remove_entries("b", by="carol", values=[("md5", md5(3).upper())]) == 1
    assert banks.remove_entries("b", by="carol", content_ids=["never-there"]) == 0
    assert rows(banks, "b") == {("c2", "sha256", "ab" * 32)}


def test_one_signal_of_a_content_id_can_go_and_refusals_say_which_kind(banks: BankStore) -> None:
    """What BankService needs beyond the basics: NOT_FOUND and ALREADY_EXISTS as their own errors, a removal
    of a content id's PDQ hashes only, and why a setting changed in the audit row."""
    banks.create_bank("b", by="alice")
    banks.add_entries("b", [NewEntry("c1", "pdq", pdq(1)), NewEntry("c1", "pdq", pdq(2)), NewEntry("c1", "md5", md5(1))], by="alice")
    assert banks.remove_entries("b", by="bob", content_ids=["c1"], signal_type="pdq", reason="re-hashed") == 2
    assert rows(banks, "b") == {("c1", "md5", md5(1))}
    assert banks.audit("b", limit=1)[0].detail == "2 removed (pdq only); re-hashed"
    with pytest.raises(ValueError, match="signal_type is one of"):
        banks.remove_entries("b", by="bob", content_ids=["c1"], signal_type="phash")
    banks.update_settings("b", by="carol", matching_ratio=0.5, reason="rolling out")
    assert banks.audit("b", limit=1)[0].detail.endswith("matching_ratio=0.5 enabled=True; rolling out")
    with pytest.raises(BankExists):
        banks.create_bank("b", by="alice")
    for write in (lambda: banks.set_enabled("nope", False, by="x"), lambda: banks.add_entries("nope", [], by="x")):
        with pytest.raises(BankNotFound, match="no bank named 'nope'"):
            write()


def test_values_are_checked_with_a_sentence_naming_the_field(banks: BankStore) -> None:
    banks.create_bank("b", by="alice")
    cases = [
        (NewEntry("c", "pdq", "ab" * 31), "entry 2 of 2: a PDQ hash is 64 hexadecimal characters; got 62"),
        (NewEntry("c", "md5", "g" * 32), r"an MD5 is written in hexadecimal \(0-9, a-f\); character 1 of 'ggg"),
        (NewEntry("c", "sha256", "a" * 32), "a SHA-256 is 64 hexadecimal characters; got 32"),
        (NewEntry("", "md5", md5(1)), "content_id is empty"),
        (NewEntry("c", "phash", "00"), "signal_type is one of pdq, md5, sha256, embedding; got 'phash'"),
        (NewEntry("c", "pdq", pdq(7), quality=101), "quality is a whole number from 0 to 100"),
        (NewEntry("c", "embedding", [0.1, 0.2]), "bank 'b' has no embedding_min_cosine: set one"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            banks.add_entries("b", [NewEntry("ok", "md5", md5(5)), bad], by="alice")
    assert rows(banks, "b") == set()  # each call was refused whole


def test_embeddings_keep_one_length_a_bank_and_round_trip_as_float32(banks: BankStore) -> None:
    banks.create_bank("near", by="alice", embedding_min_cosine=0.9)
    vector = np.random.default_rng(0).standard_normal(8).astype(np.float32)
    assert banks.add_entries("near", NewEntry("c1", "embedding", vector), by="alice").added == 1
    assert banks.get_bank("near").embedding_dim == 8
    with pytest.raises(ValueError, match="the embedding has 4 numbers; bank 'near' holds embeddings of 8"):
        banks.add_entries("near", NewEntry("c2", "embedding", vector[:4]), by="alice")
    assert banks.add_entries("near", NewEntry("c3", "embedding", vector.tobytes()), by="alice").skipped == 1  # the same vector
    (entry,) = banks.load_bank_entries("near")
    assert np.array_equal(np.frombuffer(entry.value, dtype="<f4"), vector)
    assert banks.remove_entries("near", by="bob", values=[("embedding", vector)]) == 1  # by value: the same float32 numbers


def test_import_is_all_or_nothing_and_names_the_bad_line(banks: BankStore, tmp_path: Path) -> None:
    banks.create_bank("b", by="alice")
    banks.add_entries("b", NewEntry("old", "pdq", pdq(10**6)), by="alice")
    lines = ["content_id,signal_type,value,quality,note", "# exported 2026-05-01"]
    lines += [f"c{i},pdq,{pdq(i)},80" for i in range(20_000)]
    bad_at = 19_990
    lines[bad_at - 1] = "c-bad,pdq," + "z" * 64  # line numbers count from 1
    path = tmp_path / "list.csv"
    path.write_text("\n".join(lines) + "\n")
    before = banks.current_version()
    with pytest.raises(ImportRejected) as rejected:
        banks.import_entries("b", path, by="bob")
    assert rejected.value.errors == [(bad_at, "a PDQ hash is written in hexadecimal (0-9, a-f); character 1 of '" + "z" * 64 + "' is 'z'")]
    assert f"line {bad_at}:" in str(rejected.value) and "nothing was imported" in str(rejected.value)
    assert rows(banks, "b") == {("old", "pdq", pdq(10**6))}  # nothing applied
    assert banks.current_version() == before and [a.action for a in banks.audit("b")] == ["add", "create"]

    lines[bad_at - 1] = f"c-fixed,pdq,{pdq(10**6)}"  # fixed: a duplicate of what the bank holds
    lines.append(f"again,pdq,{pdq(7)}")  # and one of a line above
    path.write_text("\n".join(lines) + "\n")
    result = banks.import_entries("b", path, by="bob")
    assert (result.lines, result.added, result.skipped) == (20_001, 19_999, 2)
    assert banks.count_entries("b") == {"pdq": 20_000}
    assert banks.find_content("b", "c7")[0].quality == 80 and banks.find_content("b", "again") == []  # the first line of a value wins
    (audit, *_) = banks.audit("b")
    assert (audit.action, audit.who, audit.count, audit.version) == ("import", "bob", 19_999, result.version)


def test_import_reports_every_kind_of_bad_line(banks: BankStore) -> None:
    banks.create_bank("b", by="alice", embedding_min_cosine=0.8)
    lines = [
        f"a,md5,{md5(1)}",
        "b,md5",  # 2: too few fields
        f"c,embedding,0.1 0.2 0.3",
        "d,embedding,0.1 0.2",  # 4: another length
        "e,embedding,0.1 x",  # 5: not numbers
        f"f,pdq,{pdq(1)},high",  # 6: quality
        f"g,sha1,{md5(1)}",  # 7: unknown type
    ]
    with pytest.raises(ImportRejected) as rejected:
        banks.import_entries("b", lines, by="bob", name="upload.csv")
    assert [n for n, _ in rejected.value.errors] == [2, 4, 5, 6, 7]
    assert str(rejected.value).startswith("upload.csv: 5 bad lines, nothing was imported: line 2: expected content_id,signal_type,value")
    assert banks.count_entries("b") == {} and banks.get_bank("b").embedding_dim is None


def test_changes_since_between_two_replicas(store_location: str) -> None:
    with open_store(store_location) as writer_store, open_store(store_location) as reader_store:
        writer, replica = BankStore(writer_store), BankStore(reader_store)
        assert replica.current_version() == 0 and not replica.changes_since(0).changed
        writer.create_bank("b", by="alice")
        writer.add_entries("b", [NewEntry("c1", "pdq", pdq(1)), NewEntry("c2", "md5", md5(2))], by="alice")
        seen = replica.current_version()
        state = {(e.content_id, e.signal_type, e.value) for e in replica.load_bank_entries("b")}

        writer.add_entries("b", NewEntry("c3", "pdq", pdq(3)), by="bob")
        writer.remove_entries("b", by="bob", content_ids=["c1"])
        writer.update_settings("b", by="bob", pdq_max_distance=16)
        changes = replica.changes_since(seen)
        assert changes.changed and not changes.reload_all and changes.version == replica.current_version() == seen + 3
        assert [(b.name, b.pdq_max_distance) for b in changes.banks] == [("b", 16)]
        assert [(e.content_id, e.value) for e in changes.added] == [("c3", pdq(3))]
        assert [(r.content_id, r.value) for r in changes.removed] == [("c1", pdq(1))]
        state -= {(r.content_id, r.signal_type, r.value) for r in changes.removed}
        state |= {(e.content_id, e.signal_type, e.value) for e in changes.added}
        assert state == rows(writer, "b")
        assert not replica.changes_since(changes.version).changed

        assert replica.changes_since(changes.version + 5).reload_all  # a store whose version went backwards
        writer.import_entries("b", [f"x{i},md5,{md5(100 + i)}" for i in range(50)], by="carol")
        assert replica.changes_since(changes.version, limit=10).reload_all  # an import: reload rather than replay
        writer.prune_removals(changes.version)
        assert replica.changes_since(seen).reload_all  # its tombstones are gone
        assert not replica.changes_since(changes.version).reload_all


def test_audit_rows_name_who_what_and_when_and_never_values(banks: BankStore) -> None:
    banks.create_bank("b", by="alice", embedding_min_cosine=0.9)
    banks.add_entries("b", NewEntry("case-17", "embedding", [1.0, 0.0]), by="bob")
    banks.remove_entries("b", by="carol", content_ids=["case-17"], reason="appeal upheld")
    banks.set_enabled("b", False, by="dave")
    audit = banks.audit("b")
    assert [(a.action, a.who, a.content_id, a.count) for a in audit] == [
        ("disable", "dave", None, 0), ("remove", "carol", "case-17", 1), ("add", "bob", "case-17", 1), ("create", "alice", None, 0)
    ]  # fmt: skip
    assert "appeal upheld" in audit[1].detail
    assert [a.version for a in audit] == sorted((a.version for a in audit), reverse=True)
    assert all(a.at > 0 for a in audit)


def test_a_read_only_store_refuses_bank_writes(store_location: str) -> None:
    with open_store(store_location) as store:
        BankStore(store).create_bank("b", by="alice")
    with open_store(store_location, read_only=True) as reader:
        banks = BankStore(reader)
        assert [b.name for b in banks.list_banks()] == ["b"]
        with pytest.raises(StoreError, match="read-only"):
            banks.create_bank("c", by="alice")


def test_concurrent_adds_and_removes_from_two_stores_stay_consistent(store_location: str) -> None:
    """Two writers (each its own store, as two replicas or two curators) and a replica polling meanwhile:
    the replica's state, rebuilt only from changes_since, ends equal to the table, and the versions
    stamped on the audit rows are 1..N with no gap and no repeat."""
    with open_store(store_location) as setup:
        BankStore(setup).create_bank("b", by="alice")
    keys = [NewEntry(f"c{i}", "md5", md5(i)) for i in range(40)]
    errors: list[BaseException] = []

    def churn(seed: int) -> None:
        rng = random.Random(seed)
        try:
            # SQLite: the other writer's transaction is milliseconds, but two threads on two cores can queue behind each other.
            options = {} if "://" in store_location else {"busy_timeout_s": 10.0}
            with open_store(store_location, **options) as store:
                banks = BankStore(store)
                for _ in range(60):
                    chosen = rng.sample(keys, 3)
                    if rng.random() < 0.5:
                        banks.add_entries("b", chosen, by=f"writer{seed}")
                    else:
                        banks.remove_entries("b", by=f"writer{seed}", content_ids=[e.content_id for e in chosen])
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    with open_store(store_location) as replica_store:
        replica = BankStore(replica_store)
        version, state = 0, set()
        writers = [threading.Thread(target=churn, args=(seed,)) for seed in (1, 2)]
        for thread in writers:
            thread.start()

        def poll() -> None:
            nonlocal version
            changes = replica.changes_since(version, limit=1_000_000)
            assert not changes.reload_all
            # Removals then additions, as LiveBanks.apply does: an entry removed and added again after `version` stays.
            state.difference_update((r.content_id, r.value) for r in changes.removed)
            state.update((e.content_id, e.value) for e in changes.added)
            version = changes.version

        while any(thread.is_alive() for thread in writers):
            poll()
        for thread in writers:
            thread.join()
        assert errors == []
        poll()
        assert state == {(e.content_id, e.value) for e in replica.load_bank_entries("b")}
        versions = sorted(a.version for a in replica.audit(limit=1000))
        assert versions == list(range(1, 122))  # create + 2 x 60 changes, each its own version
