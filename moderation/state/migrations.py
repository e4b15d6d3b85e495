"""Versioned schema migrations, one ordered list for both backends.

Every change to what the store keeps is a new `Migration` appended here (never an
edit of one already released): the decisions table, the thumbnails table, and later
the hash banks (4), the review queue (5), what decided each decision (6) and reviewers' questions (7). A store records what it has applied in
`schema_version` (one row per migration); opening a writable store applies the
missing ones in order, in one transaction:

- SQLite: under `BEGIN IMMEDIATE`, so two processes opening one file take turns.
- PostgreSQL: under a transaction-scoped advisory lock (`pg_advisory_xact_lock`), so
  replicas starting at once do not race; PostgreSQL's DDL is transactional, so a
  migration that fails leaves the schema as it was.

A store whose schema is newer than this code (a newer release migrated it) is
refused with a message saying so: an old server must not write rows a newer schema
does not expect. Readers (`policy diff`, `case show`) never migrate.

Files written before this module existed (schema 1) carry their version in
`store_info` and have no `schema_version` table; they are adopted at version 1 and
migrated forward. SQLite files keep `store_info.schema_version` current too, so a
release from before migrations refuses a newer file instead of writing to it.
"""

from __future__ import annotations

from dataclasses import dataclass

# Any constant both sides agree on: the advisory lock every replica takes to migrate.
POSTGRES_MIGRATION_LOCK = 0x6D6F64_7374_6F72  # "mod" "stor"


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


# The migration that adds decisions.details (readers of older stores read '' instead).
DECISION_DETAILS = 6
# The migration that adds review_questions (a reviewer's questions to the explainer, kept with the case).
REVIEW_QUESTIONS = 7

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "decisions: each decision's image embedding (never the image) for `policy diff` and `case show`",
        sqlite=(
            # IF NOT EXISTS: files from before migrations already have these.
            """CREATE TABLE IF NOT EXISTS decisions (
                request_id     TEXT NOT NULL,
                ts             REAL NOT NULL,  -- unix seconds, UTC
                policy_id      TEXT NOT NULL,
                policy_version TEXT NOT NULL,
                action         TEXT NOT NULL,  -- ALLOW, REVIEW or BLOCK
                model_id       TEXT NOT NULL,
                embedding      BLOB NOT NULL   -- float32, little-endian, L2-normalised as the model returned it
            )""",
            "CREATE INDEX IF NOT EXISTS decisions_by_time ON decisions (ts)",
            "CREATE INDEX IF NOT EXISTS decisions_by_policy_time ON decisions (policy_id, ts)",
            "CREATE INDEX IF NOT EXISTS decisions_by_request ON decisions (request_id)",
        ),
        postgres=(
            # id: the paging key readers use after ts (SQLite's is the rowid).
            """CREATE TABLE decisions (
                id             BIGSERIAL PRIMARY KEY,
                request_id     TEXT NOT NULL,
                ts             DOUBLE PRECISION NOT NULL,
                policy_id      TEXT NOT NULL,
                policy_version TEXT NOT NULL,
                action         TEXT NOT NULL CHECK (action IN ('ALLOW', 'REVIEW', 'BLOCK')),
                model_id       TEXT NOT NULL,
                embedding      BYTEA NOT NULL
            )""",
            "CREATE INDEX decisions_by_time ON decisions (ts, id)",
            "CREATE INDEX decisions_by_policy_time ON decisions (policy_id, ts, id)",
            "CREATE INDEX decisions_by_request ON decisions (request_id)",
        ),
    ),
    Migration(
        2,
        "thumbnails: opt-in JPEGs of flagged cases, one row per request id",
        sqlite=(
            """CREATE TABLE thumbnails (
                request_id TEXT PRIMARY KEY,
                saved_at   REAL NOT NULL,  -- unix seconds, UTC; retention counts from here
                jpeg       BLOB NOT NULL
            )""",
            "CREATE INDEX thumbnails_by_time ON thumbnails (saved_at)",
        ),
        postgres=(
            """CREATE TABLE thumbnails (
                request_id TEXT PRIMARY KEY,
                saved_at   DOUBLE PRECISION NOT NULL,
                jpeg       BYTEA NOT NULL
            )""",
            "CREATE INDEX thumbnails_by_time ON thumbnails (saved_at)",
        ),
    ),
    Migration(
        3,
        "cases are the caller's: decisions and thumbnails keyed by caller and request id (issue 18, item 3)",
        sqlite=(
            # Rows from before carry caller '' (unknown): `case show` lists them under it.
            "ALTER TABLE decisions ADD COLUMN caller TEXT NOT NULL DEFAULT ''",
            # SQLite cannot change a primary key in place: a new table, the rows, the old name.
            """CREATE TABLE thumbnails_by_caller (
                caller     TEXT NOT NULL,  -- token name, mTLS subject or 'anonymous'
                request_id TEXT NOT NULL,
                saved_at   REAL NOT NULL,
                jpeg       BLOB NOT NULL,
                PRIMARY KEY (caller, request_id)
            )""",
            "INSERT INTO thumbnails_by_caller (caller, request_id, saved_at, jpeg) SELECT '', request_id, saved_at, jpeg FROM thumbnails",
            "DROP TABLE thumbnails",
            "ALTER TABLE thumbnails_by_caller RENAME TO thumbnails",
            "CREATE INDEX thumbnails_by_time ON thumbnails (saved_at)",
            "CREATE INDEX thumbnails_by_request ON thumbnails (request_id)",
        ),
        postgres=(
            "ALTER TABLE decisions ADD COLUMN caller TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE thumbnails ADD COLUMN caller TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE thumbnails DROP CONSTRAINT thumbnails_pkey",
            "ALTER TABLE thumbnails ADD PRIMARY KEY (caller, request_id)",
            "CREATE INDEX thumbnails_by_request ON thumbnails (request_id)",
        ),
    ),
    Migration(
        4,
        "banks: named lists of known content (PDQ, MD5, SHA-256, embeddings), their audit and a change version (issue 20)",
        sqlite=(
            # Every bank write takes the next version from this one row first, in its transaction:
            # writers take turns, so versions commit in order and a replica's "since N" misses nothing.
            """CREATE TABLE bank_version (
                id                     INTEGER PRIMARY KEY CHECK (id = 1),
                version                INTEGER NOT NULL,
                removals_pruned_through INTEGER NOT NULL DEFAULT 0  -- tombstones up to here are gone
            )""",
            "INSERT INTO bank_version (id, version) VALUES (1, 0)",
            """CREATE TABLE banks (
                name                 TEXT PRIMARY KEY,
                enabled              INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
                pdq_max_distance     INTEGER NOT NULL DEFAULT 31 CHECK (pdq_max_distance BETWEEN 0 AND 255),
                pdq_min_quality      INTEGER NOT NULL DEFAULT 50 CHECK (pdq_min_quality BETWEEN 0 AND 100),
                embedding_min_cosine REAL CHECK (embedding_min_cosine BETWEEN -1 AND 1),  -- none until measured
                embedding_dim        INTEGER,  -- set by the first embedding added
                matching_ratio       REAL NOT NULL DEFAULT 1 CHECK (matching_ratio BETWEEN 0 AND 1),
                created_by           TEXT NOT NULL,
                created_at           REAL NOT NULL,  -- unix seconds
                note                 TEXT NOT NULL DEFAULT '',
                version              INTEGER NOT NULL  -- the bank version of its last settings change
            )""",
            """CREATE TABLE bank_entries (
                id          INTEGER PRIMARY KEY,
                bank        TEXT NOT NULL,
                content_id  TEXT NOT NULL,
                signal_type TEXT NOT NULL CHECK (signal_type IN ('pdq', 'md5', 'sha256', 'embedding')),
                value       TEXT NOT NULL,  -- lowercase hex; for an embedding the SHA-256 of its bytes
                embedding   BLOB,           -- float32 little-endian, embeddings only
                quality     INTEGER,        -- PDQ quality when known
                note        TEXT NOT NULL DEFAULT '',
                added_by    TEXT NOT NULL,
                added_at    REAL NOT NULL,
                version     INTEGER NOT NULL,
                UNIQUE (bank, signal_type, value),
                CHECK ((signal_type = 'embedding') = (embedding IS NOT NULL))
            )""",
            "CREATE INDEX bank_entries_by_bank ON bank_entries (bank)",  # with the rowid: pages by (bank, id)
            "CREATE INDEX bank_entries_by_content ON bank_entries (bank, content_id)",
            "CREATE INDEX bank_entries_by_version ON bank_entries (version)",
            """CREATE TABLE bank_removals (
                version     INTEGER NOT NULL,
                bank        TEXT NOT NULL,
                content_id  TEXT NOT NULL,
                signal_type TEXT NOT NULL,
                value       TEXT NOT NULL,
                embedding   BLOB
            )""",
            "CREATE INDEX bank_removals_by_version ON bank_removals (version)",
            """CREATE TABLE bank_audit (
                id         INTEGER PRIMARY KEY,
                at         REAL NOT NULL,
                who        TEXT NOT NULL,
                action     TEXT NOT NULL,
                bank       TEXT NOT NULL,
                content_id TEXT,
                count      INTEGER NOT NULL DEFAULT 0,
                detail     TEXT NOT NULL DEFAULT '',  -- ids, counts and settings; never image bytes
                version    INTEGER NOT NULL
            )""",
            "CREATE INDEX bank_audit_by_bank ON bank_audit (bank, id)",
        ),
        postgres=(
            """CREATE TABLE bank_version (
                id                      INTEGER PRIMARY KEY CHECK (id = 1),
                version                 BIGINT NOT NULL,
                removals_pruned_through BIGINT NOT NULL DEFAULT 0
            )""",
            "INSERT INTO bank_version (id, version) VALUES (1, 0)",
            """CREATE TABLE banks (
                name                 TEXT PRIMARY KEY,
                enabled              BOOLEAN NOT NULL DEFAULT TRUE,
                pdq_max_distance     INTEGER NOT NULL DEFAULT 31 CHECK (pdq_max_distance BETWEEN 0 AND 255),
                pdq_min_quality      INTEGER NOT NULL DEFAULT 50 CHECK (pdq_min_quality BETWEEN 0 AND 100),
                embedding_min_cosine DOUBLE PRECISION CHECK (embedding_min_cosine BETWEEN -1 AND 1),
                embedding_dim        INTEGER,
                matching_ratio       DOUBLE PRECISION NOT NULL DEFAULT 1 CHECK (matching_ratio BETWEEN 0 AND 1),
                created_by           TEXT NOT NULL,
                created_at           DOUBLE PRECISION NOT NULL,
                note                 TEXT NOT NULL DEFAULT '',
                version              BIGINT NOT NULL
            )""",
            """CREATE TABLE bank_entries (
                id          BIGSERIAL PRIMARY KEY,
                bank        TEXT NOT NULL,
                content_id  TEXT NOT NULL,
                signal_type TEXT NOT NULL CHECK (signal_type IN ('pdq', 'md5', 'sha256', 'embedding')),
                value       TEXT NOT NULL,
                embedding   BYTEA,
                quality     SMALLINT,
                note        TEXT NOT NULL DEFAULT '',
                added_by    TEXT NOT NULL,
                added_at    DOUBLE PRECISION NOT NULL,
                version     BIGINT NOT NULL,
                UNIQUE (bank, signal_type, value),
                CHECK ((signal_type = 'embedding') = (embedding IS NOT NULL))
            )""",
            "CREATE INDEX bank_entries_by_bank ON bank_entries (bank, id)",
            "CREATE INDEX bank_entries_by_content ON bank_entries (bank, content_id)",
            "CREATE INDEX bank_entries_by_version ON bank_entries (version)",
            """CREATE TABLE bank_removals (
                version     BIGINT NOT NULL,
                bank        TEXT NOT NULL,
                content_id  TEXT NOT NULL,
                signal_type TEXT NOT NULL,
                value       TEXT NOT NULL,
                embedding   BYTEA
            )""",
            "CREATE INDEX bank_removals_by_version ON bank_removals (version)",
            """CREATE TABLE bank_audit (
                id         BIGSERIAL PRIMARY KEY,
                at         DOUBLE PRECISION NOT NULL,
                who        TEXT NOT NULL,
                action     TEXT NOT NULL,
                bank       TEXT NOT NULL,
                content_id TEXT,
                count      BIGINT NOT NULL DEFAULT 0,
                detail     TEXT NOT NULL DEFAULT '',
                version    BIGINT NOT NULL
            )""",
            "CREATE INDEX bank_audit_by_bank ON bank_audit (bank, id)",
        ),
    ),
    Migration(
        5,
        "review queue: a case per REVIEW decision, its lease and decision, and the audit of every action (issue 22)",
        sqlite=(
            """CREATE TABLE review_cases (
                case_id        TEXT PRIMARY KEY,
                opened_at      REAL NOT NULL,  -- unix seconds
                updated_at     REAL NOT NULL,  -- last open, decision or reopening: retention counts from here
                caller         TEXT NOT NULL,  -- with request_id: the case's thumbnail, when one was kept
                request_id     TEXT NOT NULL,
                policy_id      TEXT NOT NULL,
                policy_version TEXT NOT NULL,
                model_id       TEXT NOT NULL,
                reason         TEXT NOT NULL,  -- score, bank_match or explainer
                category_id    TEXT NOT NULL,  -- the category that put it up for review
                categories     TEXT NOT NULL,  -- JSON: scores, thresholds, bands, clauses (never image bytes)
                bank_matches   TEXT NOT NULL DEFAULT '[]',  -- JSON: bank, content id, signal type
                deciding_frame INTEGER NOT NULL DEFAULT 0,
                rationale      TEXT NOT NULL DEFAULT '',
                status         TEXT NOT NULL CHECK (status IN ('open', 'decided', 'expired')),
                lease_holder   TEXT,
                lease_expires  REAL,
                decided_by     TEXT,
                decided_at     REAL,
                violates       INTEGER CHECK (violates IN (0, 1)),
                clause_id      TEXT,
                note           TEXT,            -- plain text as the reviewer typed it; escaped where shown
                reopened       INTEGER NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX review_cases_by_status ON review_cases (status, opened_at, case_id)",
            "CREATE INDEX review_cases_by_lease ON review_cases (lease_holder)",
            "CREATE INDEX review_cases_by_request ON review_cases (caller, request_id)",
            "CREATE INDEX review_cases_by_update ON review_cases (updated_at)",
            """CREATE TABLE review_audit (
                id             INTEGER PRIMARY KEY,
                case_id        TEXT NOT NULL,
                at             REAL NOT NULL,
                who            TEXT NOT NULL,
                action         TEXT NOT NULL,  -- open, lease, decide, reopen, expire
                policy_id      TEXT NOT NULL,
                policy_version TEXT NOT NULL,
                detail         TEXT NOT NULL DEFAULT ''
            )""",
            "CREATE INDEX review_audit_by_case ON review_audit (case_id, id)",
        ),
        postgres=(
            """CREATE TABLE review_cases (
                case_id        TEXT PRIMARY KEY,
                opened_at      DOUBLE PRECISION NOT NULL,
                updated_at     DOUBLE PRECISION NOT NULL,
                caller         TEXT NOT NULL,
                request_id     TEXT NOT NULL,
                policy_id      TEXT NOT NULL,
                policy_version TEXT NOT NULL,
                model_id       TEXT NOT NULL,
                reason         TEXT NOT NULL,
                category_id    TEXT NOT NULL,
                categories     TEXT NOT NULL,
                bank_matches   TEXT NOT NULL DEFAULT '[]',
                deciding_frame INTEGER NOT NULL DEFAULT 0,
                rationale      TEXT NOT NULL DEFAULT '',
                status         TEXT NOT NULL CHECK (status IN ('open', 'decided', 'expired')),
                lease_holder   TEXT,
                lease_expires  DOUBLE PRECISION,
                decided_by     TEXT,
                decided_at     DOUBLE PRECISION,
                violates       INTEGER CHECK (violates IN (0, 1)),
                clause_id      TEXT,
                note           TEXT,
                reopened       INTEGER NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX review_cases_by_status ON review_cases (status, opened_at, case_id)",
            "CREATE INDEX review_cases_by_lease ON review_cases (lease_holder)",
            "CREATE INDEX review_cases_by_request ON review_cases (caller, request_id)",
            "CREATE INDEX review_cases_by_update ON review_cases (updated_at)",
            """CREATE TABLE review_audit (
                id             BIGSERIAL PRIMARY KEY,
                case_id        TEXT NOT NULL,
                at             DOUBLE PRECISION NOT NULL,
                who            TEXT NOT NULL,
                action         TEXT NOT NULL,
                policy_id      TEXT NOT NULL,
                policy_version TEXT NOT NULL,
                detail         TEXT NOT NULL DEFAULT ''
            )""",
            "CREATE INDEX review_audit_by_case ON review_audit (case_id, id)",
        ),
    ),
    Migration(
        DECISION_DETAILS,
        "decisions: what decided each one (scores, thresholds, bands, clauses, shadow results, the explainer's rationale) "
        "for `case show`",
        # JSON (moderation/state/records.py, decision_details); '' for rows written before.
        sqlite=("ALTER TABLE decisions ADD COLUMN details TEXT NOT NULL DEFAULT ''",),
        postgres=("ALTER TABLE decisions ADD COLUMN details TEXT NOT NULL DEFAULT ''",),
    ),
    Migration(
        REVIEW_QUESTIONS,
        "review questions: a reviewer's question about a case and the explainer's advisory answer, kept with the case (issue 22)",
        sqlite=(
            """CREATE TABLE review_questions (
                id             INTEGER PRIMARY KEY,
                case_id        TEXT NOT NULL,
                asked_at       REAL NOT NULL,  -- unix seconds
                asked_by       TEXT NOT NULL,
                question       TEXT NOT NULL,  -- plain text as the reviewer typed it; escaped where shown
                answer         TEXT NOT NULL,  -- advisory, never a decision
                model_id       TEXT NOT NULL
            )""",
            "CREATE INDEX review_questions_by_case ON review_questions (case_id, id)",
        ),
        postgres=(
            """CREATE TABLE review_questions (
                id             BIGSERIAL PRIMARY KEY,
                case_id        TEXT NOT NULL,
                asked_at       DOUBLE PRECISION NOT NULL,
                asked_by       TEXT NOT NULL,
                question       TEXT NOT NULL,
                answer         TEXT NOT NULL,
                model_id       TEXT NOT NULL
            )""",
            "CREATE INDEX review_questions_by_case ON review_questions (case_id, id)",
        ),
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version

SCHEMA_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (
    version     INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at  DOUBLE PRECISION NOT NULL  -- unix seconds
)"""


def pending(current: int) -> tuple[Migration, ...]:
    """The migrations a store at `current` still needs, in order."""
    return tuple(m for m in MIGRATIONS if m.version > current)


def newer_than_code_message(where: str, found: int) -> str:
    return (
        f"{where} has store schema {found}, newer than this release of moderation knows (up to {SCHEMA_VERSION}); "
        "a newer release migrated it: upgrade moderation, or point it at another store"
    )


def _check_order() -> None:
    versions = [m.version for m in MIGRATIONS]
    if versions != list(range(1, len(versions) + 1)):
        raise AssertionError(f"migrations must be numbered 1, 2, 3... in order, got {versions}")


_check_order()
