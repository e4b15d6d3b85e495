"""ReviewService: the review queue over gRPC (docs/reviewing.md), for the `moderation review` CLI or a console.

A thin servicer over `ReviewStore` (moderation/state/review.py), which keeps the cases,
their leases and the audit; this module maps requests to store calls and store errors to
statuses. Every call needs a reviewer token (interceptors.py, `TokenAuthInterceptor`,
reviewer_tokens_file) and takes no request slot; the reviewer in the audit is the
caller's token name (`token:NAME`).

It opens its own connection to the state store (as BankService's writes do): every call
is one short transaction there, so a reviewer never waits behind the decision batches
of the server's own connection, and never reads a batch that is not committed. Blocking
work runs in a small thread pool, off the event loop. A maintenance task, every
`MAINTAIN_S`, expires open cases past review_max_case_age_days, deletes cases past the
retention (the thumbnails') and sets the queue gauges (depth, leased, oldest open age).

AskCase asks the explainer about a case's kept thumbnail through the shell's escalation tier
(`attach` hands the shell over), under the case's policy version and category; the question
and the advisory answer are kept with the case (`review_questions`) and the asking audited.
Questions are never logged.

Statuses: unknown case NOT_FOUND; a case decided twice, a lease that expired, a decision
without a lease, reopening an open case, an expired case FAILED_PRECONDITION; a case
another reviewer holds ABORTED; more than review_max_leases_per_reviewer leases
RESOURCE_EXHAUSTED; the explainer off, no thumbnail kept, a policy version no longer served
FAILED_PRECONDITION; a question the tier sheds or fails on UNAVAILABLE, one it times out on
DEADLINE_EXCEEDED; a question empty, over 300 characters or on several lines, a note over 2000 characters, an unknown clause, a bad page token or
case id INVALID_ARGUMENT; the store unreachable UNAVAILABLE. Notes and rationales are
stored and returned as plain text: whatever shows them escapes them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from moderation.escalation.answer import check_question
from moderation.serving.auth import caller_identity
from moderation.serving.limits import status_message
from moderation.state.records import StoreError
from moderation.state.review import MAX_LIST, Case, CaseConflict, CaseNotFound, CaseQuestion, ReviewStore
from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import review_pb2 as rpb
from moderation.v1 import review_pb2_grpc as rpb_grpc

if TYPE_CHECKING:
    from moderation.ops.config import Settings
    from moderation.ops.metrics import ModerationMetrics
    from moderation.policy.schema import Policy
    from moderation.serving.shell import ServingShell
    from moderation.state.store import StateStore

log = logging.getLogger(__name__)

T = TypeVar("T")

SERVICE_NAME = rpb.DESCRIPTOR.services_by_name["ReviewService"].full_name
MAINTAIN_S = 10.0
DEFAULT_PAGE = 50
MAX_CASE_ID = 64
QUEUE_OFF = "the review queue is off: set MODERATION_REVIEWER_TOKENS_FILE and a state store"
EXPLAINER_OFF = (
    "the explainer is off on this server, so questions cannot be asked: run it in-process (MODERATION_EXPLAINER_MODE=in-process) "
    "or point the server at explain-serve (MODERATION_EXPLAINER_MODE=remote, MODERATION_EXPLAINER_TARGET)"
)
NO_THUMBNAILS = (
    "this server keeps no thumbnails, and the explainer answers about the case's thumbnail: turn on MODERATION_KEEP_THUMBNAILS "
    "(with MODERATION_DATABASE_URL) or set MODERATION_THUMBNAIL_STORE; cases opened from then on can be asked about"
)
ASK_TIME_S = 60.0  # a question without a deadline: the tier's own timeout still applies

STATUS_TO_PB = {"open": rpb.CASE_STATUS_OPEN, "decided": rpb.CASE_STATUS_DECIDED, "expired": rpb.CASE_STATUS_EXPIRED}
STATUS_FROM_PB = {value: name for name, value in STATUS_TO_PB.items()}
BAND_TO_PB = {"BELOW": pb.BAND_BELOW, "BORDERLINE": pb.BAND_BORDERLINE, "ABOVE": pb.BAND_ABOVE}
ACTION_TO_PB = {"ALLOW": pb.ACTION_ALLOW, "REVIEW": pb.ACTION_REVIEW, "BLOCK": pb.ACTION_BLOCK}
SIGNAL_TO_PB = {
    "pdq": pb.BANK_SIGNAL_TYPE_PDQ, "md5": pb.BANK_SIGNAL_TYPE_MD5, "sha256": pb.BANK_SIGNAL_TYPE_SHA256,
    "embedding": pb.BANK_SIGNAL_TYPE_EMBEDDING,
}  # fmt: skip
CONFLICT_CODES = {
    "leased_by_other": grpc.StatusCode.ABORTED,
    "too_many_leases": grpc.StatusCode.RESOURCE_EXHAUSTED,
}  # every other conflict: FAILED_PRECONDITION


class ReviewServiceError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        message = status_message(message)
        super().__init__(message)
        self.code = code
        self.message = message


class ReviewServicer(rpb_grpc.ReviewServiceServicer):
    """ReviewService over the state store's review queue; `attach` opens its connection once the server loaded."""

    def __init__(
        self,
        store_location: str | Path | None,
        *,
        enabled: bool,
        metrics: ModerationMetrics,
        lease_s: float = 600.0,
        max_leases_per_reviewer: int = 5,
        max_case_age_s: float = 3 * 86400.0,
        retention_s: float | None = None,
        thumbnails_kept: bool = False,
        thumbnail_directory: Path | None = None,
    ):
        self._store_location = store_location
        self._enabled = enabled and store_location is not None
        self._metrics = metrics
        self._options = {
            "lease_s": lease_s, "max_leases_per_reviewer": max_leases_per_reviewer, "max_case_age_s": max_case_age_s,
            "retention_s": retention_s,
        }  # fmt: skip
        self._thumbnails_kept = thumbnails_kept
        self._thumbnail_directory = thumbnail_directory
        self._store: StateStore | None = None
        self.queue: ReviewStore | None = None
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="review")
        self._shell: ServingShell | None = None
        self._maintenance: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, metrics: ModerationMetrics) -> ReviewServicer:
        location = settings.database_url if settings.database_url is not None else settings.embedding_store
        return cls(
            location,
            enabled=settings.reviewer_tokens_file is not None,
            metrics=metrics,
            lease_s=settings.review_lease_s,
            max_leases_per_reviewer=settings.review_max_leases_per_reviewer,
            max_case_age_s=settings.review_max_case_age_days * 86400.0,
            retention_s=settings.thumbnail_retention_days * 86400.0,
            thumbnails_kept=settings.thumbnails_on,
            thumbnail_directory=settings.thumbnail_store if settings.database_url is None else None,
        )

    async def attach(self, shell: ServingShell | None = None) -> None:
        """Open this service's connection to the store and start the maintenance task (before SERVING).

        `shell`: the serving shell, whose escalation tier answers reviewers' questions and whose
        registry holds the policies cases were judged under.
        """
        from moderation.runtime import ConfigurationError
        from moderation.state.store import open_store

        self._shell = shell
        if not self._enabled:
            return
        try:
            # No retention and no thumbnails of its own: this connection works the queue; the server's store prunes the rest.
            self._store = await asyncio.to_thread(open_store, self._store_location)
        except StoreError as error:
            raise ConfigurationError(f"cannot open the state store for the review queue: {error}") from error
        self.queue = ReviewStore(self._store, **self._options)  # type: ignore[arg-type]
        self._maintenance = asyncio.create_task(self._maintain_periodically())
        log.info(
            "review queue on: leases of %g s, at most %d per reviewer, open cases expire after %g days",
            self.queue.lease_s, self.queue.max_leases_per_reviewer, self.queue.max_case_age_s / 86400,
        )  # fmt: skip

    async def close(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            try:
                await self._maintenance
            except asyncio.CancelledError:
                pass
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)
        if self._store is not None:
            await asyncio.to_thread(self._store.close)

    # --- plumbing ------------------------------------------------------------------------------

    async def _maintain_periodically(self) -> None:
        while True:
            try:
                await self.maintain()
            except StoreError as error:
                log.warning("review queue maintenance failed (retried in %g s): %s", MAINTAIN_S, error)
            except Exception:  # noqa: BLE001 - the task must outlive one bad round
                log.exception("review queue maintenance failed unexpectedly")
            await asyncio.sleep(MAINTAIN_S)

    async def maintain(self) -> None:
        """Expire, prune, and refresh the queue gauges once."""
        queue = self._queue()
        expired, deleted = await self._run(queue.maintain)
        if expired or deleted:
            log.info("review queue: %d open cases expired (review_max_case_age_days), %d cases past the retention deleted", expired, deleted)
        stats = await self._run(queue.stats)
        self._metrics.review_queue_depth.set(stats.open)
        self._metrics.review_leased_cases.set(stats.leased)
        self._metrics.review_oldest_open_age.set(0.0 if stats.oldest_open_at is None else max(0.0, queue.clock() - stats.oldest_open_at))

    def _queue(self) -> ReviewStore:
        if self.queue is None:
            raise ReviewServiceError(grpc.StatusCode.FAILED_PRECONDITION, QUEUE_OFF)
        return self.queue

    async def _run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(function, *args, **kwargs))

    def _status(self, error: Exception, method: str) -> tuple[grpc.StatusCode, str]:
        if isinstance(error, ReviewServiceError):
            return error.code, error.message
        if isinstance(error, CaseNotFound):
            return grpc.StatusCode.NOT_FOUND, status_message(str(error))
        if isinstance(error, CaseConflict):
            return CONFLICT_CODES.get(error.kind, grpc.StatusCode.FAILED_PRECONDITION), status_message(str(error))
        if isinstance(error, ValueError):
            return grpc.StatusCode.INVALID_ARGUMENT, status_message(str(error))
        if isinstance(error, StoreError):
            log.warning("ReviewService.%s: the state store failed: %s", method, error)
            return grpc.StatusCode.UNAVAILABLE, "the state store holding the review queue cannot be reached; retry shortly"
        log.error("ReviewService.%s failed unexpectedly", method, exc_info=error)
        return grpc.StatusCode.INTERNAL, f"internal error in ReviewService.{method}; the server logged the details"

    async def _answer(self, context: grpc.aio.ServicerContext, method: str, work: Awaitable[T]) -> T:
        try:
            return await work
        except Exception as error:  # noqa: BLE001 - every failure becomes a status
            code, message = self._status(error, method)
        await context.abort(code, message)
        raise AssertionError("unreachable: abort raises")

    def _load_thumbnail(self, case: Case) -> bytes | None:
        if not self._thumbnails_kept:
            return None
        if self._thumbnail_directory is not None:
            from moderation.state.thumbnails import thumbnail_path

            try:
                return thumbnail_path(self._thumbnail_directory, case.request_id, case.caller).read_bytes()
            except FileNotFoundError:
                return None
        return self._queue().thumbnail(case)

    # --- RPCs ----------------------------------------------------------------------------------

    async def ListCases(self, request: rpb.ListCasesRequest, context: grpc.aio.ServicerContext) -> rpb.ListCasesResponse:
        return await self._answer(context, "ListCases", self._list(request))

    async def _list(self, request: rpb.ListCasesRequest) -> rpb.ListCasesResponse:
        queue = self._queue()
        size = request.page_size or DEFAULT_PAGE
        if not 1 <= size <= MAX_LIST:
            raise ValueError(f"page_size must be between 1 and {MAX_LIST}; got {request.page_size}")
        if request.status not in STATUS_FROM_PB and request.status != rpb.CASE_STATUS_UNSPECIFIED:
            raise ValueError(f"unknown case status {request.status}")
        after = parse_page_token(request.page_token) if request.page_token else None
        cases = await self._run(
            queue.list_cases, status=STATUS_FROM_PB.get(request.status), policy_id=request.policy_id or None, limit=size + 1, after=after
        )
        more = len(cases) > size
        cases = cases[:size]
        stats = await self._run(queue.stats)
        token = f"{cases[-1].opened_at!r}:{cases[-1].case_id}" if more else ""
        return rpb.ListCasesResponse(cases=[case_to_pb(c, queue.clock()) for c in cases], next_page_token=token, open_cases=stats.open)

    async def LeaseNext(self, request: rpb.LeaseNextRequest, context: grpc.aio.ServicerContext) -> rpb.LeaseNextResponse:
        return await self._answer(context, "LeaseNext", self._lease_next(request, caller_identity(context)))

    async def _lease_next(self, request: rpb.LeaseNextRequest, who: str) -> rpb.LeaseNextResponse:
        queue = self._queue()
        case = await self._run(queue.lease_next, who, policy_id=request.policy_id or None)
        return rpb.LeaseNextResponse(case=case_to_pb(case, queue.clock()) if case is not None else None)

    async def LeaseCase(self, request: rpb.LeaseCaseRequest, context: grpc.aio.ServicerContext) -> rpb.LeaseCaseResponse:
        return await self._answer(context, "LeaseCase", self._lease_case(request, caller_identity(context)))

    async def _lease_case(self, request: rpb.LeaseCaseRequest, who: str) -> rpb.LeaseCaseResponse:
        queue = self._queue()
        case = await self._run(queue.lease_case, checked_case_id(request.case_id), who)
        return rpb.LeaseCaseResponse(case=case_to_pb(case, queue.clock()))

    async def GetCase(self, request: rpb.GetCaseRequest, context: grpc.aio.ServicerContext) -> rpb.GetCaseResponse:
        return await self._answer(context, "GetCase", self._get(request))

    async def _get(self, request: rpb.GetCaseRequest) -> rpb.GetCaseResponse:
        queue = self._queue()
        case = await self._run(queue.get_case, checked_case_id(request.case_id))
        jpeg = await self._run(self._load_thumbnail, case) if request.include_thumbnail else None
        questions = await self._run(queue.questions, case.case_id)
        return rpb.GetCaseResponse(
            case=case_to_pb(case, queue.clock(), questions, self._clauses(case)), thumbnail_jpeg=jpeg or b"", thumbnails_kept=self._thumbnails_kept
        )

    async def DecideCase(self, request: rpb.DecideCaseRequest, context: grpc.aio.ServicerContext) -> rpb.DecideCaseResponse:
        return await self._answer(context, "DecideCase", self._decide(request, caller_identity(context)))

    async def _decide(self, request: rpb.DecideCaseRequest, who: str) -> rpb.DecideCaseResponse:
        queue = self._queue()
        if not request.HasField("violates"):
            raise ValueError("say whether the case violates the policy: set violates (true or false)")
        case = await self._run(
            queue.decide, checked_case_id(request.case_id), who, violates=request.violates, clause_id=request.clause_id, note=request.note
        )
        self._metrics.review_decisions.labels(who.removeprefix("token:"), "violates" if case.violates else "benign").inc()
        agreement = self._metrics.review_agreement
        agrees = bool(case.violates) == case.clip_flagged
        agreement.labels(case.policy_id, case.policy_version, case.category_id, "clip", "agree" if agrees else "disagree").inc()
        if (said := case.explainer_verdict) is not None:
            category, explainer_violates = said
            agrees = bool(case.violates) == explainer_violates
            agreement.labels(case.policy_id, case.policy_version, category, "explainer", "agree" if agrees else "disagree").inc()
        log.info("review case %s decided by %s (%s)", case.case_id, who, "violates" if case.violates else "does not violate")
        return rpb.DecideCaseResponse(case=case_to_pb(case, queue.clock()))

    async def ReopenCase(self, request: rpb.ReopenCaseRequest, context: grpc.aio.ServicerContext) -> rpb.ReopenCaseResponse:
        return await self._answer(context, "ReopenCase", self._reopen(request, caller_identity(context)))

    async def _reopen(self, request: rpb.ReopenCaseRequest, who: str) -> rpb.ReopenCaseResponse:
        queue = self._queue()
        case = await self._run(queue.reopen, checked_case_id(request.case_id), who, note=request.note)
        log.info("review case %s reopened by %s", case.case_id, who)
        return rpb.ReopenCaseResponse(case=case_to_pb(case, queue.clock()))

    async def GetCaseAudit(self, request: rpb.GetCaseAuditRequest, context: grpc.aio.ServicerContext) -> rpb.GetCaseAuditResponse:
        return await self._answer(context, "GetCaseAudit", self._audit(request))

    async def _audit(self, request: rpb.GetCaseAuditRequest) -> rpb.GetCaseAuditResponse:
        rows = await self._run(self._queue().audit, checked_case_id(request.case_id))
        return rpb.GetCaseAuditResponse(
            entries=[
                rpb.CaseAuditEntry(at=r.at, who=r.who, action=r.action, policy_id=r.policy_id, policy_version=r.policy_version, detail=r.detail)
                for r in rows
            ]
        )


    async def AskCase(self, request: rpb.AskCaseRequest, context: grpc.aio.ServicerContext) -> rpb.AskCaseResponse:
        time_left = context.time_remaining()
        return await self._answer(context, "AskCase", self._ask(request, caller_identity(context), ASK_TIME_S if time_left is None else time_left))

    async def _ask(self, request: rpb.AskCaseRequest, who: str, time_left_s: float) -> rpb.AskCaseResponse:
        from moderation.escalation.tier import EscalationStatus, ReviewerQuestion

        queue = self._queue()
        case_id = checked_case_id(request.case_id)
        question = check_question(request.question)  # InvalidQuestion is a ValueError: INVALID_ARGUMENT
        tier = self._shell.core.escalation if self._shell is not None else None
        if tier is None:
            raise ReviewServiceError(grpc.StatusCode.FAILED_PRECONDITION, EXPLAINER_OFF)
        case = await self._run(queue.check_asker, case_id, who)
        if not self._thumbnails_kept:
            raise ReviewServiceError(grpc.StatusCode.FAILED_PRECONDITION, NO_THUMBNAILS)
        jpeg = await self._run(self._load_thumbnail, case)
        if not jpeg:
            raise ReviewServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"no thumbnail is kept for case {case_id} (not made, or evicted past thumbnail_retention_days or thumbnail_max_bytes), "
                "and the explainer answers about the case's thumbnail: keep them on (MODERATION_KEEP_THUMBNAILS or "
                "MODERATION_THUMBNAIL_STORE) with room enough",
            )
        frame = await self._run(decode_thumbnail, jpeg)
        policy = self._policy_of(case)
        category = case.category_id if any(c.id == case.category_id for c in policy.categories) else None
        outcome = await tier.ask(ReviewerQuestion(case.case_id, jpeg, frame, policy, category, question), time_left_s)
        if outcome.status is not EscalationStatus.COMPLETED or outcome.answer is None:
            detail = f"question of {len(question)} characters; not answered ({outcome.status.value}): {outcome.reason}"
            await self._run(queue.record_question, case_id, who, question, detail[:500])
            log.info("review case %s: %s's question was not answered (%s)", case_id, who, outcome.status.value)
            code = grpc.StatusCode.DEADLINE_EXCEEDED if outcome.status is EscalationStatus.TIMED_OUT else grpc.StatusCode.UNAVAILABLE
            raise ReviewServiceError(code, f"the explainer did not answer ({outcome.status.value}): {outcome.reason}")
        answer = outcome.answer
        detail = f"question of {len(question)} characters; advisory answer by {answer.model_id}"
        kept = await self._run(queue.record_question, case_id, who, question, detail, answer=answer.text, model_id=answer.model_id)
        assert kept is not None
        log.info("review case %s: %s asked the explainer (%s, %d tokens)", case_id, who, answer.model_id, answer.generated_tokens)
        questions = await self._run(queue.questions, case_id)
        case = await self._run(queue.get_case, case_id)
        return rpb.AskCaseResponse(question=question_to_pb(kept), case=case_to_pb(case, queue.clock(), questions, self._clauses(case)))

    def _clauses(self, case: Case) -> dict[str, str]:
        """Clause id -> text in the policy version the case was judged under (empty when no longer served)."""
        if self._shell is None:
            return {}
        for served in self._shell.registry.all():
            if served.policy.id == case.policy_id and served.policy.version == case.policy_version:
                return {c.clause.id: c.clause.text for c in served.policy.categories}
        return {}

    def _policy_of(self, case: Case) -> Policy:
        """The policy (active or shadow) at the version the case was judged under."""
        assert self._shell is not None
        served = [s.policy for s in self._shell.registry.all() if s.policy.id == case.policy_id]
        for policy in served:
            if policy.version == case.policy_version:
                return policy
        now = ", ".join(f"version {p.version!r}" for p in served) or "not at all"
        raise ReviewServiceError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"case {case.case_id} was judged under policy {case.policy_id!r} version {case.policy_version!r}, which this server no "
            f"longer serves ({case.policy_id!r}: {now}); the explainer answers only under the version the case was judged by",
        )


def decode_thumbnail(jpeg: bytes):  # noqa: ANN201 - PIL.Image.Image
    import io

    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as image:
        return image.convert("RGB")


def question_to_pb(question: CaseQuestion) -> rpb.CaseQuestion:
    return rpb.CaseQuestion(
        question=question.question, answer=question.answer, advisory=True, asked_by=question.asked_by, asked_at=question.asked_at,
        model=question.model_id,
    )


def checked_case_id(case_id: str) -> str:
    if not case_id or len(case_id) > MAX_CASE_ID or not case_id.isascii() or not case_id.isprintable():
        raise ValueError(f"case_id must be a case's id (printable ASCII, 1 to {MAX_CASE_ID} characters)")
    return case_id


def parse_page_token(token: str) -> tuple[float, str]:
    opened, sep, case_id = token.partition(":")
    try:
        if not sep:
            raise ValueError
        return float(opened), checked_case_id(case_id)
    except ValueError:
        raise ValueError("page_token is not one this server gave; pass the next_page_token of the previous page") from None


def case_to_pb(case: Case, now: float, questions: Sequence[CaseQuestion] = (), clauses: dict[str, str] | None = None) -> rpb.Case:
    """The case as ReviewService returns it; `clauses`: clause id -> text, from the policy version it was judged under."""
    clauses = clauses or {}
    holder = case.leased_by(now)
    message = rpb.Case(
        case_id=case.case_id, status=STATUS_TO_PB[case.status], opened_at=case.opened_at, caller=case.caller, request_id=case.request_id,
        policy_id=case.policy_id, policy_version=case.policy_version, model_id=case.model_id, reason=case.reason,
        category_id=case.category_id, deciding_frame=case.deciding_frame, rationale=case.rationale, reopened=case.reopened,
        lease_holder=holder or "", lease_expires_at=case.lease_expires if holder else 0.0,
        categories=[
            rpb.CaseCategory(
                category_id=c.category_id, score=c.score, review_threshold=c.review_threshold, block_threshold=c.block_threshold,
                band=BAND_TO_PB.get(c.band, pb.BAND_UNSPECIFIED), action=ACTION_TO_PB.get(c.action, pb.ACTION_UNSPECIFIED),
                clause_id=c.clause_id, forced_by=c.forced_by, clause_text=clauses.get(c.clause_id, ""),
            )
            for c in case.categories
        ],
        bank_matches=[
            rpb.CaseBankMatch(
                bank=str(m.get("bank", "")), content_id=str(m.get("content_id", "")),
                signal_type=SIGNAL_TO_PB.get(str(m.get("signal_type")), pb.BANK_SIGNAL_TYPE_UNSPECIFIED), distance=float(m.get("distance", 0.0)),
            )
            for m in case.bank_matches
        ],
        questions=[question_to_pb(q) for q in questions],
    )  # fmt: skip
    if case.status == "decided":
        message.decision.CopyFrom(
            rpb.CaseDecision(
                violates=bool(case.violates), clause_id=case.clause_id or "", note=case.note or "", decided_by=case.decided_by or "",
                decided_at=case.decided_at or 0.0,
            )
        )
    return message
