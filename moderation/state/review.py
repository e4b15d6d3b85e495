"""The review queue in the state store: cases, their leases and decisions, and the audit of every action.

Every decision the service answers REVIEW (by the scores, the explainer, or a bank
match whose rule says review) opens a *case* (schema 5, moderation/state/migrations.py):

- `review_cases`: one row per case: the request (caller, request id: its thumbnail,
  when one was kept, is the `thumbnails` row of the same caller and request id: by
  reference, never copied), the policy id and version, the model, why it is up for
  review, the category behind it, every category's score, thresholds, band, action and
  clause (JSON), bank matches, the deciding frame and the explainer's rationale; then
  its status (open, decided, expired), its lease (holder, expiry) and its decision
  (violates or not, clause id, note, who, when).
- `review_audit`: one row per action on a case (open, lease, decide, reopen, expire, ask):
  who, when, under which policy id and version (the case's), and a short detail.
- `review_questions` (schema 7): a reviewer's question about the case and the explainer's
  advisory answer (ReviewService.AskCase), kept with the case and deleted with it.

**Opening is off the request path.** The review listener (moderation/serving/listeners/
review.py) hands a `NewCase` to `StateStore.open_case`, which buffers it with the
decisions and thumbnails; the flush writes it in the same transaction as they are
(`write_cases`). Bounded: a queue that already holds `max_open_cases` open cases takes
no more; what it does not take is counted and logged by the store, the decision itself
was answered long before. On PostgreSQL the count and the inserts run under an advisory
lock, so replicas sharing one database keep one bound.

**Leases.** A reviewer leases a case (`lease_case`, or `lease_next`: the oldest open case
nobody holds) for `lease_s`; while the lease lives no one else can lease or decide it.
A lease that expired may be taken by anyone; its former holder must lease it again to
decide. A reviewer holds at most `max_leases_per_reviewer` live leases.

**Decisions** need the caller's live lease; a decided case cannot be decided again until
it is reopened (an appeal: `reopen`), which puts it back in the queue with its earlier
decision kept in the audit.

**Bounds and retention.** Open cases older than `max_case_age_s` are expired by
`maintain` (audited as `expire`) and no longer leased; cases whose last change is older
than `retention_s` (the thumbnails' retention) are deleted with their audit rows.

Every operation is one short transaction on the store's connection (`_transaction`),
and every time comes from `clock` (tests inject one: no sleeps).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moderation.state.store import StateStore

STATUSES = ("open", "decided", "expired")
REASONS = ("score", "bank_match", "explainer")
SERVICE = "service"  # who opens and expires cases in the audit
MAX_NOTE_CHARS = 2000
MAX_CLAUSE_CHARS = 128
MAX_REVIEWER_CHARS = 256
MAX_LIST = 500  # cases a page of ListCases may ask for
MAX_READ = 2 * MAX_LIST  # cases one read may return (a page and one more, to know whether there is a next)
# Any constant the replicas agree on: the lock every replica takes to count open cases and insert new ones.
POSTGRES_REVIEW_LOCK = 0x6D6F64_7265_7669  # "mod" "re" "vi"

_CASE_COLUMNS = (
    "case_id, opened_at, updated_at, caller, request_id, policy_id, policy_version, model_id, reason, category_id, "
    "categories, bank_matches, deciding_frame, rationale, status, lease_holder, lease_expires, decided_by, decided_at, "
    "violates, clause_id, note, reopened"
)
_AUDIT_COLUMNS = "case_id, at, who, action, policy_id, policy_version, detail"


@dataclass(frozen=True, slots=True)
class CaseCategory:
    category_id: str
    score: float
    review_threshold: float
    block_threshold: float
    band: str  # BELOW, BORDERLINE, ABOVE: CLIP's view
    action: str  # ALLOW, REVIEW, BLOCK: after bank rules
    clause_id: str
    forced_by: str = ""
    # SmolVLM2's verdict when it judged this category: "violates", "clear" ("" when it did not).
    explainer: str = ""


@dataclass(frozen=True, slots=True)
class NewCase:
    """What the review listener knows of a REVIEW decision: ids, scores and text, never image bytes."""

    case_id: str
    opened_at: float
    caller: str
    request_id: str
    policy_id: str
    policy_version: str
    model_id: str
    reason: str
    category_id: str
    categories: tuple[CaseCategory, ...]
    bank_matches: tuple[dict[str, Any], ...] = ()
    deciding_frame: int = 0
    rationale: str = ""


@dataclass(frozen=True, slots=True)
class Case:
    case_id: str
    opened_at: float
    updated_at: float
    caller: str
    request_id: str
    policy_id: str
    policy_version: str
    model_id: str
    reason: str
    category_id: str
    categories: tuple[CaseCategory, ...]
    bank_matches: tuple[dict[str, Any], ...]
    deciding_frame: int
    rationale: str
    status: str
    lease_holder: str | None
    lease_expires: float | None
    decided_by: str | None
    decided_at: float | None
    violates: bool | None
    clause_id: str | None
    note: str | None
    reopened: int

    def leased_by(self, now: float) -> str | None:
        """Who holds a live lease on it at `now`, if anyone."""
        if self.lease_holder and self.lease_expires is not None and self.lease_expires > now:
            return self.lease_holder
        return None

    def clause_category(self, clause_id: str) -> str | None:
        return next((c.category_id for c in self.categories if c.clause_id == clause_id), None)

    @property
    def explainer_verdict(self) -> tuple[str, bool] | None:
        """(category, violates) of SmolVLM2's verdict on this case, when it gave one."""
        return next(((c.category_id, c.explainer == "violates") for c in self.categories if c.explainer), None)

    @property
    def clip_flagged(self) -> bool:
        """Whether CLIP's score put the case's category at or above its review threshold."""
        return any(c.category_id == self.category_id and c.band != "BELOW" for c in self.categories)

    @property
    def label(self) -> str | None:
        """The decided case as a calibration label: the category of its clause when it violates, else 'benign'."""
        if self.status != "decided" or self.violates is None:
            return None
        if not self.violates:
            return "benign"
        return self.clause_category(self.clause_id or "") or self.category_id


@dataclass(frozen=True, slots=True)
class CaseAudit:
    at: float
    who: str
    action: str
    policy_id: str
    policy_version: str
    detail: str


@dataclass(frozen=True, slots=True)
class CaseQuestion:
    """A reviewer's question about a case and the explainer's advisory answer (plain text both: escape where shown)."""

    asked_at: float
    asked_by: str
    question: str
    answer: str
    model_id: str


@dataclass(frozen=True, slots=True)
class QueueStats:
    open: int
    oldest_open_at: float | None
    leased: int


class CaseNotFound(LookupError):
    pass


class CaseConflict(RuntimeError):
    """The case is not in a state that allows this; `kind` says which (it picks the gRPC status)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind  # decided, leased_by_other, lease_expired, not_leased, not_decided, too_many_leases, expired


@dataclass
class ReviewStore:
    store: StateStore
    lease_s: float = 600.0
    max_leases_per_reviewer: int = 5
    max_case_age_s: float = 7 * 86400.0
    retention_s: float | None = None
    clock: Callable[[], float] = field(default=time.time)

    # --- reading --------------------------------------------------------------------------

    def get_case(self, case_id: str) -> Case:
        with self.store._transaction() as tx:
            return _existing(tx, case_id)

    def list_cases(
        self, *, status: str | None = None, policy_id: str | None = None, limit: int = 100, after: tuple[float, str] | None = None
    ) -> list[Case]:
        """Cases oldest first (by opening), `after` the (opened_at, case_id) of the last one of the previous page."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}; got {status!r}")
        if not 1 <= limit <= MAX_READ:
            raise ValueError(f"limit must be between 1 and {MAX_READ}; got {limit}")
        clauses, params = ["1 = 1"], []
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        if policy_id:
            clauses.append("policy_id = ?")
            params.append(policy_id)
        if after is not None:
            clauses.append("(opened_at > ? OR (opened_at = ? AND case_id > ?))")
            params += [after[0], after[0], after[1]]
        sql = f"SELECT {_CASE_COLUMNS} FROM review_cases WHERE {' AND '.join(clauses)} ORDER BY opened_at, case_id LIMIT ?"
        with self.store._transaction() as tx:
            return [_case(row) for row in tx.execute(sql, (*params, limit)).fetchall()]

    def audit(self, case_id: str) -> list[CaseAudit]:
        with self.store._transaction() as tx:
            _existing(tx, case_id)
            rows = tx.execute(f"SELECT {_AUDIT_COLUMNS} FROM review_audit WHERE case_id = ? ORDER BY id", (case_id,)).fetchall()
        return [CaseAudit(float(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), str(r[6])) for r in rows]

    def questions(self, case_id: str) -> list[CaseQuestion]:
        """The questions asked about a case and their answers, oldest first."""
        with self.store._transaction() as tx:
            rows = tx.execute(
                "SELECT asked_at, asked_by, question, answer, model_id FROM review_questions WHERE case_id = ? ORDER BY id", (case_id,)
            ).fetchall()
        return [CaseQuestion(float(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4])) for r in rows]

    def stats(self) -> QueueStats:
        now = self.clock()
        with self.store._transaction() as tx:
            count, oldest = tx.execute("SELECT COUNT(*), MIN(opened_at) FROM review_cases WHERE status = 'open'").fetchone()
            (leased,) = tx.execute("SELECT COUNT(*) FROM review_cases WHERE status = 'open' AND lease_expires > ?", (now,)).fetchone()
        return QueueStats(int(count), None if oldest is None else float(oldest), int(leased))

    def thumbnail(self, case: Case) -> bytes | None:
        """The case's thumbnail, when one was kept (by reference: the thumbnails row of its caller and request id)."""
        with self.store._transaction() as tx:  # on this connection, every use is a transaction of its own
            row = tx.execute("SELECT jpeg FROM thumbnails WHERE caller = ? AND request_id = ?", (case.caller, case.request_id)).fetchone()
        return None if row is None else bytes(row[0])

    # --- acting ---------------------------------------------------------------------------

    def lease_case(self, case_id: str, reviewer: str) -> Case:
        """Lease (or renew) `case_id` for `reviewer`."""
        _check_reviewer(reviewer)
        now = self.clock()
        with self.store._transaction() as tx:
            case = _existing(tx, case_id, lock=True)
            if case.status == "decided":
                raise CaseConflict("decided", _decided_message(case))
            if case.status == "expired" or case.opened_at < now - self.max_case_age_s:
                raise CaseConflict("expired", f"case {case_id} was open longer than review_max_case_age_days and expired; it can no longer be leased")
            holder = case.leased_by(now)
            if holder is not None and holder != reviewer:
                raise CaseConflict("leased_by_other", f"case {case_id} is leased by another reviewer until {_when(case.lease_expires)}")
            if holder is None:
                self._check_lease_count(tx, reviewer, now)
            return self._lease(tx, case, reviewer, now, "lease" if holder is None else "renew")

    def lease_next(self, reviewer: str, *, policy_id: str | None = None) -> Case | None:
        """Lease the oldest open case nobody holds (of `policy_id` when given); None when there is none."""
        _check_reviewer(reviewer)
        now = self.clock()
        with self.store._transaction() as tx:
            self._check_lease_count(tx, reviewer, now)
            where, params = "status = 'open' AND opened_at >= ? AND (lease_expires IS NULL OR lease_expires <= ?)", [now - self.max_case_age_s, now]
            if policy_id:
                where += " AND policy_id = ?"
                params.append(policy_id)
            lock = " FOR UPDATE SKIP LOCKED" if tx.dialect == "postgres" else ""
            row = tx.execute(f"SELECT {_CASE_COLUMNS} FROM review_cases WHERE {where} ORDER BY opened_at, case_id LIMIT 1{lock}", tuple(params)).fetchone()
            if row is None:
                return None
            return self._lease(tx, _case(row), reviewer, now, "lease")

    def decide(self, case_id: str, reviewer: str, *, violates: bool, clause_id: str = "", note: str = "") -> Case:
        """Record the reviewer's decision on a case they hold a live lease on."""
        _check_reviewer(reviewer)
        note = _plain(note, "note", MAX_NOTE_CHARS)
        clause_id = _plain(clause_id, "clause id", MAX_CLAUSE_CHARS)
        now = self.clock()
        with self.store._transaction() as tx:
            case = _existing(tx, case_id, lock=True)
            if case.status == "decided":
                raise CaseConflict("decided", _decided_message(case))
            if case.status == "expired":
                raise CaseConflict("expired", f"case {case_id} expired (open longer than review_max_case_age_days); reopen it to decide it")
            holder = case.leased_by(now)
            if holder is not None and holder != reviewer:
                raise CaseConflict("leased_by_other", f"case {case_id} is leased by another reviewer until {_when(case.lease_expires)}")
            if holder is None:
                if case.lease_holder == reviewer:
                    raise CaseConflict("lease_expired", f"your lease on case {case_id} expired at {_when(case.lease_expires)}; lease it again to decide it")
                raise CaseConflict("not_leased", f"case {case_id} is not leased by you; lease it first")
            clauses = [c.clause_id for c in case.categories]
            if violates:
                clause_id = clause_id or next((c.clause_id for c in case.categories if c.category_id == case.category_id), "")
                if clause_id not in clauses:
                    raise ValueError(f"clause id {clause_id!r} is not a clause of this case's policy categories ({', '.join(clauses)})")
            elif clause_id and clause_id not in clauses:
                raise ValueError(f"clause id {clause_id!r} is not a clause of this case's policy categories ({', '.join(clauses)})")
            tx.execute(
                "UPDATE review_cases SET status = 'decided', decided_by = ?, decided_at = ?, violates = ?, clause_id = ?, note = ?, "
                "lease_holder = NULL, lease_expires = NULL, updated_at = ? WHERE case_id = ?",
                (reviewer, now, int(violates), clause_id, note, now, case_id),
            )
            detail = f"{'violates' if violates else 'does not violate'}" + (f" clause {clause_id}" if clause_id else "")
            _audit(tx, case, now, reviewer, "decide", detail + (f"; note of {len(note)} characters" if note else ""))
            return _existing(tx, case_id)

    def check_asker(self, case_id: str, reviewer: str) -> Case:
        """The case, when `reviewer` holds its live lease (only they may ask the explainer about it); else CaseConflict."""
        _check_reviewer(reviewer)
        now = self.clock()
        with self.store._transaction() as tx:
            case = _existing(tx, case_id)
        if case.status != "open":
            raise CaseConflict(case.status, f"case {case_id} is {case.status}; questions are asked while deciding an open case you lease")
        holder = case.leased_by(now)
        if holder is not None and holder != reviewer:
            raise CaseConflict("leased_by_other", f"case {case_id} is leased by another reviewer until {_when(case.lease_expires)}")
        if holder is None:
            if case.lease_holder == reviewer:
                raise CaseConflict("lease_expired", f"your lease on case {case_id} expired at {_when(case.lease_expires)}; lease it again to ask")
            raise CaseConflict("not_leased", f"case {case_id} is not leased by you; lease it first")
        return case

    def record_question(
        self, case_id: str, reviewer: str, question: str, detail: str, *, answer: str | None = None, model_id: str = ""
    ) -> CaseQuestion | None:
        """Keep a question and its answer with the case (None: not answered) and audit the asking with `detail`."""
        _check_reviewer(reviewer)
        question = _plain(question, "question", MAX_NOTE_CHARS)
        now = self.clock()
        with self.store._transaction() as tx:
            case = _existing(tx, case_id)
            kept = None
            if answer is not None:
                kept = CaseQuestion(now, reviewer, question, _nul(answer), _nul(model_id))
                tx.execute(
                    "INSERT INTO review_questions (case_id, asked_at, asked_by, question, answer, model_id) VALUES (?, ?, ?, ?, ?, ?)",
                    (case_id, kept.asked_at, reviewer, kept.question, kept.answer, kept.model_id),
                )
            _audit(tx, case, now, reviewer, "ask", detail)
        return kept

    def reopen(self, case_id: str, who: str, *, note: str = "") -> Case:
        """Put a decided (or expired) case back in the queue, on appeal; the earlier decision stays in the audit."""
        _check_reviewer(who)
        note = _plain(note, "note", MAX_NOTE_CHARS)
        now = self.clock()
        with self.store._transaction() as tx:
            case = _existing(tx, case_id, lock=True)
            if case.status == "open":
                raise CaseConflict("not_decided", f"case {case_id} is open (not decided); only a decided or expired case can be reopened")
            earlier = "" if case.status == "expired" else f"was: {'violates' if case.violates else 'does not violate'} by {case.decided_by}"
            # A reopened case counts its age from now: an appeal of an old case must not expire at once.
            tx.execute(
                "UPDATE review_cases SET status = 'open', decided_by = NULL, decided_at = NULL, violates = NULL, clause_id = NULL, "
                "note = NULL, lease_holder = NULL, lease_expires = NULL, reopened = reopened + 1, opened_at = ?, updated_at = ? "
                "WHERE case_id = ?",
                (now, now, case_id),
            )
            _audit(tx, case, now, who, "reopen", "; ".join(p for p in (earlier, f"reason: {note}" if note else "") if p))
            return _existing(tx, case_id)

    def maintain(self) -> tuple[int, int]:
        """Expire open cases past the age bound, delete cases past the retention; (expired, deleted)."""
        now = self.clock()
        age_cutoff = now - self.max_case_age_s
        with self.store._transaction() as tx:
            stale = tx.execute(
                "SELECT case_id, policy_id, policy_version FROM review_cases WHERE status = 'open' AND opened_at < ? LIMIT 10000",
                (age_cutoff,),
            ).fetchall()
            if stale:
                tx.executemany(
                    f"INSERT INTO review_audit ({_AUDIT_COLUMNS}) VALUES (?, ?, ?, 'expire', ?, ?, 'open longer than review_max_case_age_days')",
                    [(case_id, now, SERVICE, policy_id, version) for case_id, policy_id, version in stale],
                )
                tx.executemany(
                    "UPDATE review_cases SET status = 'expired', lease_holder = NULL, lease_expires = NULL, updated_at = ? WHERE case_id = ?",
                    [(now, case_id) for case_id, _, _ in stale],
                )
            deleted = 0
            if self.retention_s is not None:
                cutoff = now - self.retention_s
                tx.execute("DELETE FROM review_audit WHERE case_id IN (SELECT case_id FROM review_cases WHERE updated_at < ?)", (cutoff,))
                tx.execute("DELETE FROM review_questions WHERE case_id IN (SELECT case_id FROM review_cases WHERE updated_at < ?)", (cutoff,))
                deleted = tx.execute("DELETE FROM review_cases WHERE updated_at < ?", (cutoff,)).rowcount
        return len(stale), max(deleted, 0)

    # --- helpers --------------------------------------------------------------------------

    def _check_lease_count(self, tx: Any, reviewer: str, now: float) -> None:
        (held,) = tx.execute(
            "SELECT COUNT(*) FROM review_cases WHERE status = 'open' AND lease_holder = ? AND lease_expires > ?", (reviewer, now)
        ).fetchone()
        if held >= self.max_leases_per_reviewer:
            raise CaseConflict(
                "too_many_leases",
                f"you hold {held} leases, the most review_max_leases_per_reviewer allows; decide one or let it expire first",
            )

    def _lease(self, tx: Any, case: Case, reviewer: str, now: float, action: str) -> Case:
        expires = now + self.lease_s
        tx.execute("UPDATE review_cases SET lease_holder = ?, lease_expires = ? WHERE case_id = ?", (reviewer, expires, case.case_id))
        _audit(tx, case, now, reviewer, action, f"until {_when(expires)}")
        return _existing(tx, case.case_id)


def write_cases(tx: Any, cases: Sequence[NewCase], max_open: int) -> int:
    """Insert `cases` (with their `open` audit rows) while fewer than `max_open` are open; how many did not fit.

    Runs inside the store's batch transaction (sqlite.py, postgres.py); a case id already
    stored is skipped (a retried batch).
    """
    if tx.dialect == "postgres":
        tx.execute("SELECT pg_advisory_xact_lock(?)", (POSTGRES_REVIEW_LOCK,))
    (open_now,) = tx.execute("SELECT COUNT(*) FROM review_cases WHERE status = 'open'").fetchone()
    room = max(0, max_open - int(open_now))
    taken = list(cases[:room])
    if taken:
        tx.executemany(
            f"INSERT INTO review_cases ({_CASE_COLUMNS}) VALUES ({', '.join('?' * 23)}) ON CONFLICT (case_id) DO NOTHING",
            [_new_row(c) for c in taken],
        )
        tx.executemany(
            f"INSERT INTO review_audit ({_AUDIT_COLUMNS}) VALUES (?, ?, ?, 'open', ?, ?, ?)",
            [(c.case_id, c.opened_at, SERVICE, c.policy_id, c.policy_version, f"{c.reason}: {c.category_id}") for c in taken],
        )
    return len(cases) - len(taken)


def _new_row(c: NewCase) -> tuple[object, ...]:
    categories = json.dumps([_category_dict(x) for x in c.categories], separators=(",", ":"))
    matches = json.dumps(list(c.bank_matches), separators=(",", ":"))
    return (
        _nul(c.case_id), c.opened_at, c.opened_at, _nul(c.caller), _nul(c.request_id), _nul(c.policy_id), _nul(c.policy_version),
        _nul(c.model_id), c.reason, _nul(c.category_id), categories, matches, int(c.deciding_frame), _nul(c.rationale), "open",
        None, None, None, None, None, None, None, 0,
    )  # fmt: skip


def _category_dict(c: CaseCategory) -> dict[str, Any]:
    return {
        "id": c.category_id, "score": c.score, "review": c.review_threshold, "block": c.block_threshold, "band": c.band,
        "action": c.action, "clause": c.clause_id, "forced_by": c.forced_by, "explainer": c.explainer,
    }  # fmt: skip


def _case(row: tuple) -> Case:
    categories = tuple(
        CaseCategory(
            d["id"], float(d["score"]), float(d["review"]), float(d["block"]), d["band"], d["action"], d["clause"],
            d.get("forced_by", ""), d.get("explainer", ""),
        )  # fmt: skip
        for d in json.loads(row[10])
    )
    return Case(
        case_id=str(row[0]), opened_at=float(row[1]), updated_at=float(row[2]), caller=str(row[3]), request_id=str(row[4]),
        policy_id=str(row[5]), policy_version=str(row[6]), model_id=str(row[7]), reason=str(row[8]), category_id=str(row[9]),
        categories=categories, bank_matches=tuple(json.loads(row[11])), deciding_frame=int(row[12]), rationale=str(row[13]),
        status=str(row[14]), lease_holder=row[15], lease_expires=None if row[16] is None else float(row[16]), decided_by=row[17],
        decided_at=None if row[18] is None else float(row[18]), violates=None if row[19] is None else bool(row[19]),
        clause_id=row[20], note=row[21], reopened=int(row[22]),
    )  # fmt: skip


def _existing(tx: Any, case_id: str, *, lock: bool = False) -> Case:
    suffix = " FOR UPDATE" if lock and tx.dialect == "postgres" else ""
    row = tx.execute(f"SELECT {_CASE_COLUMNS} FROM review_cases WHERE case_id = ?{suffix}", (case_id,)).fetchone()
    if row is None:
        raise CaseNotFound(f"no case {case_id!r} (unknown, or deleted past the retention)")
    return _case(row)


def _audit(tx: Any, case: Case, at: float, who: str, action: str, detail: str) -> None:
    tx.execute(
        f"INSERT INTO review_audit ({_AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (case.case_id, at, who, action, case.policy_id, case.policy_version, detail),
    )


def _decided_message(case: Case) -> str:
    return f"case {case.case_id} was already decided by {case.decided_by} at {_when(case.decided_at)}; reopen it to decide it again"


def _check_reviewer(who: str) -> None:
    if not who or len(who) > MAX_REVIEWER_CHARS:
        raise ValueError(f"a reviewer is a non-empty name of at most {MAX_REVIEWER_CHARS} characters")


def _plain(text: str, what: str, limit: int) -> str:
    """Plain text as typed (shown escaped wherever it is shown), at most `limit` characters; no NUL."""
    if len(text) > limit:
        raise ValueError(f"the {what} has {len(text)} characters; at most {limit} are kept")
    return _nul(text)


def _nul(text: str) -> str:
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _when(unix: float | None) -> str:
    if unix is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix))
