"""BankService: curating the banks of known content over gRPC (docs/banks.md, "Curating banks").

A thin servicer over `BankStore` (moderation/state/banks.py), which checks every value
and keeps the audit trail; this module maps requests to store calls and store errors
to statuses. Every call needs a curation token (interceptors.py, `TokenAuthInterceptor`)
and takes no request slot; `who` in the audit is the caller's token name.

**Two store connections, on purpose.** Reads (list, audit, export, a bank's settings)
go through the server's own `BankStore`, the one its refresher reads. Writes go through
a second connection this servicer opens on the same store: a write transaction is
visible to every reader *on its connection* before it commits, so an import streaming
for seconds on the refresher's connection would let the refresher index rows that a
rejected import then rolls back, and take their version number for one that never
committed (missing the next real change). On its own connection an uncommitted write
is invisible to everyone else, as it is between replicas.

**Blocking work runs off the event loop**: reads in `_reads` threads, writes (imports
included) in `_writes` threads; the store's write lock makes writers take turns anyway,
so a write waits there while an import runs.

**ImportEntries** streams: chunks are decoded as UTF-8 incrementally (a chunk may end
inside a line or inside a character), split into lines, and handed in batches through a
bounded feed to a write thread running `BankStore.import_entries`, which checks each line
as it streams into one transaction. Memory holds a few batches and the chunk at hand,
never the file; a file over `bank_import_max_bytes`, a line over `MAX_LINE_CHARS`, bytes
that are not UTF-8 or a client that stops sending for `IMPORT_IDLE_S` end the import
with nothing applied. While it runs an import holds the store's bank-write turn (and on
SQLite the file's write lock: decisions stay buffered meanwhile, see docs/banks.md).

**Lookup** answers with what requests see: this replica's `LiveBanks` (changes arrive
within bank_refresh_s), enabled banks, each bank's thresholds; an image lookup also
applies each bank's rollout (matching_ratio) to the image's SHA-256, while a lookup of a
hash alone has no upload to roll out and ignores it.

Errors: unknown bank NOT_FOUND, name taken ALREADY_EXISTS, a bad value INVALID_ARGUMENT
naming the field (bad import lines by number), no state store FAILED_PRECONDITION, the
store unreachable UNAVAILABLE, anything else INTERNAL without details (the traceback goes
to the log). No log line or stored row holds image bytes.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import functools
import io
import logging
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np

from moderation.core.decode import ImageRejected
from moderation.serving.auth import caller_identity
from moderation.serving.limits import echo, status_message
from moderation.signals.clip.batcher import Overloaded
from moderation.state.banks import Bank, BankExists, BankNotFound, BankStore, ImportRejected, ImportResult, NewEntry, StoredEntry
from moderation.state.records import StoreError
from moderation.v1 import banks_pb2 as bpb
from moderation.v1 import banks_pb2_grpc as bpb_grpc
from moderation.v1 import moderation_pb2 as pb

if TYPE_CHECKING:
    from moderation.ops.config import Settings
    from moderation.serving.shell import ServingShell
    from moderation.signals.banks.matcher import BankMatch, ContentHashes, LiveBanks
    from moderation.state.store import StateStore

log = logging.getLogger(__name__)

T = TypeVar("T")

SERVICE_NAME = bpb.DESCRIPTOR.services_by_name["BankService"].full_name
NO_STORE = "banks need a state store: set MODERATION_DATABASE_URL"
NO_BANKS_EXTRA = (
    "banks are off on this server: the banks extra (pdqhash, faiss-cpu) is not installed; "
    "the server's start log says so (pip install 'moderation[banks]')"
)
SIGNAL_FROM_PB = {
    pb.BANK_SIGNAL_TYPE_PDQ: "pdq",
    pb.BANK_SIGNAL_TYPE_MD5: "md5",
    pb.BANK_SIGNAL_TYPE_SHA256: "sha256",
    pb.BANK_SIGNAL_TYPE_EMBEDDING: "embedding",
}
SIGNAL_TO_PB = {name: value for value, name in SIGNAL_FROM_PB.items()}
EXPORT_HEADER = "content_id,signal_type,value,quality,note\n"

# A client that stops sending mid-import would hold the store's write turn (and SQLite's
# file lock) until its deadline: it gets this long between chunks.
IMPORT_IDLE_S = 60.0
# Lines in flight between the event loop and the import thread: at most this many
# batches of at most IMPORT_BATCH_CHARS characters (a few MB whatever the chunks' size).
IMPORT_QUEUE_BATCHES = 8
IMPORT_BATCH_CHARS = 256 * 1024
# One line, however the file is chunked: an embedding of 1024 numbers is about 13,000
# characters; a "line" beyond this is a file without newlines, kept out of memory.
MAX_LINE_CHARS = 256 * 1024
# Bad import lines quoted in the status: the first few and the count. Each sentence is
# cut and made ASCII, so the message stays about 2 KB (gRPC trailers allow 8 KB).
REPORTED_BAD_LINES = 10
MAX_LINE_ERROR_CHARS = 180
EXPORT_CHUNK_BYTES = 64 * 1024
# At shutdown, how long writes still running (an import's rollback or commit) may take before their connection closes.
WRITES_CLOSE_S = 10.0
DEFAULT_AUDIT_ROWS = 100
MAX_AUDIT_ROWS = 1000


class BankServiceError(Exception):
    """An expected failure with its gRPC code and caller-facing sentence."""

    def __init__(self, code: grpc.StatusCode, message: str):
        message = status_message(message)
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> BankServiceError:
    return BankServiceError(grpc.StatusCode.INVALID_ARGUMENT, message)


class _RequestStreamFailed(Exception):
    """The client's request stream itself failed (a malformed item): re-raised as it came, for the interceptor
    that owns that error to answer it."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class BankServicer(bpb_grpc.BankServiceServicer):
    """BankService over the state store's banks; `attach` hands it the loaded shell."""

    def __init__(self, store_location: str | Path | None, max_image_bytes: int, default_deadline_s: float, import_max_bytes: int):
        self._store_location = store_location
        self._max_image_bytes = max_image_bytes
        self._default_deadline_s = default_deadline_s
        self._import_max_bytes = import_max_bytes
        self._shell: ServingShell | None = None
        self._reader: BankStore | None = None  # the server's own: what its refresher reads
        self._writer: BankStore | None = None  # this servicer's connection (module docstring)
        self._writer_store: StateStore | None = None
        self._unavailable = NO_STORE
        self._reads = ThreadPoolExecutor(4, thread_name_prefix="bank-read")
        self._writes = ThreadPoolExecutor(2, thread_name_prefix="bank-write")

    @classmethod
    def from_settings(cls, settings: Settings) -> BankServicer:
        location = settings.database_url if settings.database_url is not None else settings.embedding_store
        return cls(location, settings.max_image_bytes, settings.default_deadline_s, settings.bank_import_max_bytes)

    async def attach(self, shell: ServingShell) -> None:
        """Take the loaded shell's banks and open the write connection (before the server says SERVING)."""
        from moderation.runtime import ConfigurationError
        from moderation.state.store import open_store

        self._shell = shell
        if self._store_location is None:
            return
        if shell.bank_store is None or shell.banks is None:
            self._unavailable = NO_BANKS_EXTRA
            return
        try:
            # No retention and no thumbnails: this connection only writes banks; the server's own store prunes.
            self._writer_store = await asyncio.to_thread(open_store, self._store_location)
        except StoreError as error:
            raise ConfigurationError(f"cannot open the state store for bank curation: {error}") from error
        self._writer = BankStore(self._writer_store)
        self._reader = shell.bank_store

    async def close(self) -> None:
        """After the transport stopped (every call ended, an unfinished import abandoned): let the writes in
        progress end (a rollback, or a commit under way) before their connection closes."""
        self._reads.shutdown(wait=False, cancel_futures=True)
        try:
            await asyncio.wait_for(asyncio.to_thread(self._writes.shutdown, wait=True, cancel_futures=True), WRITES_CLOSE_S)
        except TimeoutError:
            log.warning("bank writes still running %.0f s after the server stopped; closing their connection anyway", WRITES_CLOSE_S)
        if self._writer_store is not None:
            await asyncio.to_thread(self._writer_store.close)

    # --- plumbing ------------------------------------------------------------------------------

    def _stores(self) -> tuple[BankStore, BankStore]:
        """(reader, writer), or FAILED_PRECONDITION saying why this server has no banks."""
        if self._reader is None or self._writer is None:
            raise BankServiceError(grpc.StatusCode.FAILED_PRECONDITION, self._unavailable)
        return self._reader, self._writer

    def _live(self) -> LiveBanks:
        self._stores()
        assert self._shell is not None and self._shell.banks is not None  # _stores() says the banks are there
        return self._shell.banks

    async def _read(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reads, functools.partial(function, *args, **kwargs))

    async def _write(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writes, functools.partial(function, *args, **kwargs))

    def _deadline_s(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return remaining if remaining is not None else self._default_deadline_s

    def _status(self, error: Exception, method: str) -> tuple[grpc.StatusCode, str]:
        if isinstance(error, BankServiceError):
            return error.code, error.message
        if isinstance(error, BankNotFound):
            return grpc.StatusCode.NOT_FOUND, status_message(str(error))
        if isinstance(error, BankExists):
            return grpc.StatusCode.ALREADY_EXISTS, status_message(str(error))
        if isinstance(error, ImportRejected):
            return grpc.StatusCode.INVALID_ARGUMENT, rejection_message(error)
        if isinstance(error, ImageRejected):
            return grpc.StatusCode.INVALID_ARGUMENT, status_message(f"invalid image: {error}")
        if isinstance(error, ValueError):  # the store's checks: one sentence naming the field
            return grpc.StatusCode.INVALID_ARGUMENT, status_message(str(error))
        if isinstance(error, StoreError):
            log.warning("BankService.%s: the state store failed: %s", method, error)
            return grpc.StatusCode.UNAVAILABLE, "the state store holding the banks cannot be reached or refused the change; retry shortly"
        if isinstance(error, Overloaded):
            return grpc.StatusCode.RESOURCE_EXHAUSTED, status_message(str(error))
        if isinstance(error, TimeoutError):
            return grpc.StatusCode.DEADLINE_EXCEEDED, "the call did not finish within its deadline"
        log.error("BankService.%s failed unexpectedly", method, exc_info=error)
        return grpc.StatusCode.INTERNAL, f"internal error in BankService.{method}; the server logged the details"

    async def _answer(self, context: grpc.aio.ServicerContext, method: str, work: Awaitable[T]) -> T:
        """`work`'s answer, or the call aborted with the status its failure maps to."""
        try:
            return await work
        except _RequestStreamFailed as failed:
            raise failed.error from None
        except Exception as error:  # noqa: BLE001 - every failure becomes a status
            code, message = self._status(error, method)
        await context.abort(code, message)
        raise AssertionError("unreachable: abort raises")

    # --- RPCs ----------------------------------------------------------------------------------

    async def CreateBank(self, request: bpb.CreateBankRequest, context: grpc.aio.ServicerContext) -> bpb.CreateBankResponse:
        return await self._answer(context, "CreateBank", self._create(request, caller_identity(context)))

    async def _create(self, request: bpb.CreateBankRequest, who: str) -> bpb.CreateBankResponse:
        reader, writer = self._stores()
        settings: dict[str, Any] = {
            field: getattr(request, field)
            for field in ("pdq_max_distance", "pdq_min_quality", "embedding_min_cosine", "matching_ratio", "enabled")
            if request.HasField(field)
        }
        bank = await self._write(writer.create_bank, request.name, by=who, note=request.note, **settings)
        log.info("bank %r created by %s (version %d)", bank.name, who, bank.version)
        return bpb.CreateBankResponse(bank=bank_to_pb(bank, {}))

    async def ListBanks(self, request: bpb.ListBanksRequest, context: grpc.aio.ServicerContext) -> bpb.ListBanksResponse:
        return await self._answer(context, "ListBanks", self._list())

    async def _list(self) -> bpb.ListBanksResponse:
        reader, _ = self._stores()

        def read() -> bpb.ListBanksResponse:
            version = reader.current_version()  # first: the banks read next are at least this new
            banks = [bank_to_pb(bank, reader.count_entries(bank.name)) for bank in reader.list_banks()]
            return bpb.ListBanksResponse(banks=banks, version=version)

        return await self._read(read)

    async def UpdateBank(self, request: bpb.UpdateBankRequest, context: grpc.aio.ServicerContext) -> bpb.UpdateBankResponse:
        return await self._answer(context, "UpdateBank", self._update(request, caller_identity(context)))

    async def _update(self, request: bpb.UpdateBankRequest, who: str) -> bpb.UpdateBankResponse:
        reader, writer = self._stores()
        settings = {
            field: getattr(request, field)
            for field in ("pdq_max_distance", "pdq_min_quality", "embedding_min_cosine", "matching_ratio")
            if request.HasField(field)
        }
        if not settings and not request.HasField("enabled"):
            raise invalid("UpdateBank changes nothing: set enabled, pdq_max_distance, pdq_min_quality, embedding_min_cosine or matching_ratio")

        def update() -> Bank:
            bank = None
            # Settings first: they are what can be refused, and a refusal then changes nothing.
            if settings:
                bank = writer.update_settings(request.name, by=who, reason=request.reason, **settings)
            if request.HasField("enabled"):
                bank = writer.set_enabled(request.name, request.enabled, by=who, reason=request.reason)
            assert bank is not None
            return bank

        bank = await self._write(update)
        log.info("bank %r updated by %s (version %d): %s", bank.name, who, bank.version, ", ".join(sorted(settings)) or f"enabled={bank.enabled}")
        return bpb.UpdateBankResponse(bank=bank_to_pb(bank, await self._read(reader.count_entries, bank.name)))

    async def AddContent(self, request: bpb.AddContentRequest, context: grpc.aio.ServicerContext) -> bpb.AddContentResponse:
        return await self._answer(context, "AddContent", self._add(request, caller_identity(context), self._deadline_s(context)))

    async def _add(self, request: bpb.AddContentRequest, who: str, deadline_s: float) -> bpb.AddContentResponse:
        reader, writer = self._stores()
        content = request.WhichOneof("content")
        if content is None:
            raise invalid("AddContent needs the content: set image (encoded image bytes) or hash (signal_type and value)")
        if not request.content_id.strip():
            raise invalid("content_id is empty: name the content (your case or list id), so a match can say what it matched")
        if content == "hash":
            kind, value, quality = checked_hash(request.hash, "hash")
            entries = [NewEntry(request.content_id, kind, value, request.note, quality)]
            shown = [bpb.BankHash(signal_type=SIGNAL_TO_PB[kind], value=value, quality=quality)]
        else:
            image = self._checked_image(request.image)
            bank = await self._read(reader.get_bank, request.bank)
            if bank is None:
                raise BankNotFound(f"no bank named {echo(request.bank)!r}")
            # Embeddings only where the bank can match them: a bank without a measured cosine refuses them.
            embed = bank.embedding_min_cosine is not None
            hashes, embeddings = await self._hash_image(image, deadline_s, embed)
            entries, shown = image_entries(request.content_id, request.note, hashes, embeddings)
        added = await self._write(writer.add_entries, request.bank, entries, by=who)
        log.info("bank %r: %d entries added, %d skipped by %s (version %d)", request.bank, added.added, added.skipped, who, added.version)
        return bpb.AddContentResponse(added=added.added, skipped=added.skipped, hashes=shown, version=added.version)

    async def RemoveContent(self, request: bpb.RemoveContentRequest, context: grpc.aio.ServicerContext) -> bpb.RemoveContentResponse:
        return await self._answer(context, "RemoveContent", self._remove(request, caller_identity(context)))

    async def _remove(self, request: bpb.RemoveContentRequest, who: str) -> bpb.RemoveContentResponse:
        reader, writer = self._stores()
        if not request.content_id:
            raise invalid("content_id is empty: RemoveContent removes one content id's entries")
        kind = None
        if request.signal_type != pb.BANK_SIGNAL_TYPE_UNSPECIFIED:
            kind = signal_type_name(request.signal_type, "signal_type")

        def remove() -> tuple[int, int]:
            removed = writer.remove_entries(request.bank, by=who, content_ids=[request.content_id], signal_type=kind)
            return removed, writer.current_version()

        removed, version = await self._write(remove)
        log.info("bank %r: %d entries removed by %s (version %d)", request.bank, removed, who, version)
        return bpb.RemoveContentResponse(removed=removed, version=version)

    async def Lookup(self, request: bpb.LookupRequest, context: grpc.aio.ServicerContext) -> bpb.LookupResponse:
        return await self._answer(context, "Lookup", self._lookup(request, self._deadline_s(context)))

    async def _lookup(self, request: bpb.LookupRequest, deadline_s: float) -> bpb.LookupResponse:
        from moderation.signals.banks.hashing import PdqHash
        from moderation.signals.banks.matcher import ContentHashes

        reader, _ = self._stores()
        live = self._live()
        content = request.WhichOneof("content")
        if content is None:
            raise invalid("Lookup needs the content: set image (encoded image bytes) or hash (signal_type and value)")
        named = list(dict.fromkeys(request.banks))
        if named:
            existing = {bank.name for bank in await self._read(reader.list_banks)}
            missing = [name for name in named if name not in existing]
            if missing:
                raise BankNotFound(f"no bank named {echo(missing[0])!r}" + (f" (and {len(missing) - 1} more of banks)" if len(missing) > 1 else ""))
        matcher = live.matcher  # one snapshot for the whole lookup, as a request takes
        if content == "hash":
            kind, value, quality = checked_hash(request.hash, "hash")
            hashes = {
                "pdq": lambda: ContentHashes("", "", (PdqHash(bytes.fromhex(value), 100 if quality is None else quality),)),
                "md5": lambda: ContentHashes("", value, ()),
                "sha256": lambda: ContentHashes(value, "", ()),
            }[kind]()
            shown = [bpb.BankHash(signal_type=SIGNAL_TO_PB[kind], value=value, quality=quality)]
            matches = await self._read(matcher.match_hashes, hashes, None, named or None, rollout=False)
        else:
            image = self._checked_image(request.image)
            image_hashes, embeddings = await self._hash_image(image, deadline_s, "embedding" in matcher.signal_types)
            shown = hashes_to_pb(image_hashes)
            matches = await self._read(matcher.match_hashes, image_hashes, embeddings, named or None)
        return bpb.LookupResponse(matches=[match_to_pb(m) for m in matches], hashes=shown)

    async def ImportEntries(
        self, request_iterator: AsyncIterator[bpb.ImportEntriesRequest], context: grpc.aio.ServicerContext
    ) -> bpb.ImportEntriesResponse:
        return await self._answer(context, "ImportEntries", self._import(request_iterator, caller_identity(context)))

    async def _import(self, request_iterator: AsyncIterator[bpb.ImportEntriesRequest], who: str) -> bpb.ImportEntriesResponse:
        reader, writer = self._stores()
        requests = aiter(request_iterator)
        first = await _next_message(requests)
        if first is None:
            raise invalid("the import sent no messages: the first names the bank and carries the first chunk of the file")
        bank = first.bank
        if not bank:
            raise invalid("bank is empty: the first message of an import names the bank")
        source = echo(first.source) if first.source else "ImportEntries"
        # Before reading on: a typo in the bank's name is the likeliest mistake, and says so at once.
        # (The import checks again in its transaction.)
        if await self._read(reader.get_bank, bank) is None:
            raise BankNotFound(f"no bank named {echo(bank)!r}")
        loop = asyncio.get_running_loop()
        feed = _LineFeed(loop, IMPORT_QUEUE_BATCHES)
        importing = loop.run_in_executor(self._writes, lambda: writer.import_entries(bank, feed.lines(), by=who, name=source))
        lines = _LineSplitter(MAX_LINE_CHARS, IMPORT_BATCH_CHARS)
        received = 0
        finished = False
        try:
            message: bpb.ImportEntriesRequest | None = first
            while message is not None and not importing.done():
                if message.bank and message.bank != bank:
                    raise invalid(f"every message of one import names the same bank (or none): {echo(message.bank)!r} came after {echo(bank)!r}")
                data = message.data
                received += len(data)
                if received > self._import_max_bytes:
                    raise invalid(
                        f"the import is over {self._import_max_bytes:,} bytes (setting bank_import_max_bytes): nothing was "
                        "imported; split the file, or raise the setting"
                    )
                for batch in lines.feed(data):
                    await feed.put(batch, importing)
                message = await _next_message(requests)
            if not importing.done():
                for batch in lines.finish():
                    await feed.put(batch, importing)
            feed.end()
            finished = True
            result: ImportResult = await importing
        finally:
            if not finished:
                # Refused, failed or cancelled before the end: the import thread rolls back. (Cancelled after
                # the end was handed over, it commits: all or nothing either way, and the audit says which.)
                feed.abandon()
            importing.add_done_callback(_retrieved)
        log.info(
            "bank %r: import %r by %s: %d lines, %d added, %d skipped (version %d)",
            bank, source, who, result.lines, result.added, result.skipped, result.version,
        )  # fmt: skip
        return bpb.ImportEntriesResponse(lines=result.lines, added=result.added, skipped=result.skipped, version=result.version)

    async def ExportEntries(
        self, request: bpb.ExportEntriesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bpb.ExportEntriesResponse]:
        try:
            reader, _ = self._stores()
            kind = None if request.signal_type == pb.BANK_SIGNAL_TYPE_UNSPECIFIED else signal_type_name(request.signal_type, "signal_type")
            if await self._read(reader.get_bank, request.bank) is None:
                raise BankNotFound(f"no bank named {echo(request.bank)!r}")
            # Read in the reader's pages (10,000 entries, each page its own query): memory holds a page and a chunk.
            chunks = _ExportChunks(reader.load_bank_entries(request.bank), kind, EXPORT_CHUNK_BYTES)
            while chunk := await self._read(chunks.next):
                yield bpb.ExportEntriesResponse(data=chunk)
        except Exception as error:  # noqa: BLE001 - every failure becomes a status
            code, message = self._status(error, "ExportEntries")
            await context.abort(code, message)

    async def GetAudit(self, request: bpb.GetAuditRequest, context: grpc.aio.ServicerContext) -> bpb.GetAuditResponse:
        return await self._answer(context, "GetAudit", self._audit(request))

    async def _audit(self, request: bpb.GetAuditRequest) -> bpb.GetAuditResponse:
        reader, _ = self._stores()
        limit = request.limit or DEFAULT_AUDIT_ROWS
        if not 1 <= limit <= MAX_AUDIT_ROWS:
            raise invalid(f"limit is 1 to {MAX_AUDIT_ROWS} rows (0: {DEFAULT_AUDIT_ROWS}); got {request.limit}")

        def read() -> bpb.GetAuditResponse:
            if request.bank and reader.get_bank(request.bank) is None:
                raise BankNotFound(f"no bank named {echo(request.bank)!r}")
            rows = reader.audit(request.bank or None, limit=limit)
            return bpb.GetAuditResponse(
                entries=[
                    bpb.AuditEntry(
                        at_unix=row.at, who=row.who, action=row.action, bank=row.bank, content_id=row.content_id or "",
                        count=row.count, detail=row.detail, version=row.version,
                    )  # fmt: skip
                    for row in rows
                ]
            )

        return await self._read(read)

    # --- images --------------------------------------------------------------------------------

    def _checked_image(self, image: bytes) -> bytes:
        if not image:
            raise invalid("the image field is empty; send the encoded image bytes")
        if len(image) > self._max_image_bytes:
            raise invalid(f"the image is {len(image):,} bytes; the limit is {self._max_image_bytes:,} bytes (setting max_image_bytes)")
        return image

    async def _hash_image(self, image: bytes, deadline_s: float, embed: bool) -> tuple[ContentHashes, np.ndarray | None]:
        """Decoded, hashed and (with `embed`) embedded as a request's image would be, in the shell's pools."""
        assert self._shell is not None
        return await asyncio.wait_for(self._shell.hash_for_banks(image, deadline_s, embed), timeout=deadline_s)


# --- conversions and checks ----------------------------------------------------------------------


def bank_to_pb(bank: Bank, counts: dict[str, int]) -> bpb.Bank:
    message = bpb.Bank(
        name=bank.name,
        enabled=bank.enabled,
        pdq_max_distance=bank.pdq_max_distance,
        pdq_min_quality=bank.pdq_min_quality,
        matching_ratio=bank.matching_ratio,
        created_by=bank.created_by,
        created_at_unix=bank.created_at,
        note=bank.note,
        entries=counts,
    )
    if bank.embedding_min_cosine is not None:
        message.embedding_min_cosine = bank.embedding_min_cosine
    return message


def match_to_pb(match: BankMatch) -> pb.BankMatch:
    # No policy judged this: category, action and clause stay empty (moderation.proto says so).
    return pb.BankMatch(
        bank=match.bank,
        content_id=match.content_id,
        signal_type=SIGNAL_TO_PB[match.signal_type],
        distance=match.distance,
        threshold=match.threshold,
        frame_index=match.frame_index or 0,
    )


def hashes_to_pb(hashes: ContentHashes) -> list[bpb.BankHash]:
    shown = [bpb.BankHash(signal_type=pb.BANK_SIGNAL_TYPE_MD5, value=hashes.md5), bpb.BankHash(signal_type=pb.BANK_SIGNAL_TYPE_SHA256, value=hashes.sha256)]
    shown.extend(bpb.BankHash(signal_type=pb.BANK_SIGNAL_TYPE_PDQ, value=frame.hex(), quality=frame.quality) for frame in hashes.pdq)
    return shown


def image_entries(
    content_id: str, note: str, hashes: ContentHashes, embeddings: np.ndarray | None
) -> tuple[list[NewEntry], list[bpb.BankHash]]:
    """What adding an image adds: its MD5 and SHA-256, each sampled frame's PDQ (with quality) and embedding."""
    entries = [NewEntry(content_id, "md5", hashes.md5, note), NewEntry(content_id, "sha256", hashes.sha256, note)]
    entries.extend(NewEntry(content_id, "pdq", frame.hex(), note, frame.quality) for frame in hashes.pdq)
    if embeddings is not None:
        entries.extend(NewEntry(content_id, "embedding", row, note) for row in np.asarray(embeddings, dtype=np.float32))
    return entries, hashes_to_pb(hashes)


def signal_type_name(value: int, field: str) -> str:
    if value not in SIGNAL_FROM_PB:
        raise invalid(f"{field} is one of BANK_SIGNAL_TYPE_PDQ, _MD5, _SHA256, _EMBEDDING; got {value}")
    return SIGNAL_FROM_PB[value]


def checked_hash(message: bpb.BankHash, field: str) -> tuple[str, str, int | None]:
    """(signal type, canonical lowercase hex, quality) of a BankHash, or INVALID_ARGUMENT naming the field."""
    from moderation.signals.banks.hashing import parse_md5_hex, parse_pdq_hex, parse_sha256_hex

    if message.signal_type == pb.BANK_SIGNAL_TYPE_UNSPECIFIED:
        raise invalid(f"{field}.signal_type is unset: set BANK_SIGNAL_TYPE_PDQ, _MD5 or _SHA256")
    kind = signal_type_name(message.signal_type, f"{field}.signal_type")
    if kind == "embedding":
        raise invalid(f"{field}: an embedding is not a hash; add or look up the image itself (or import the embedding's numbers)")
    parse = {"pdq": lambda text: parse_pdq_hex(text).hex(), "md5": parse_md5_hex, "sha256": parse_sha256_hex}[kind]
    try:
        value = parse(message.value)
    except ValueError as error:
        raise invalid(f"{field}.value: {error}") from None
    quality = message.quality if message.HasField("quality") else None
    if quality is not None and not 0 <= quality <= 100:
        raise invalid(f"{field}.quality is a PDQ quality from 0 to 100; got {quality}")
    return kind, value, quality


def rejection_message(error: ImportRejected) -> str:
    """The bad lines of a refused import: the first few by number, and how many in all (bounded, ASCII)."""
    shown = "; ".join(
        f"line {number}: {_ascii(message, MAX_LINE_ERROR_CHARS)}" for number, message in error.errors[:REPORTED_BAD_LINES]
    )
    more = f" (and {error.bad_lines - REPORTED_BAD_LINES} more)" if error.bad_lines > REPORTED_BAD_LINES else ""
    plural = "s" if error.bad_lines != 1 else ""
    return f"{_ascii(error.source, 200)}: {error.bad_lines} bad line{plural}, nothing was imported: {shown}{more}"


def _ascii(text: str, limit: int) -> str:
    # ASCII: a status message travels percent-encoded, where one emoji costs 12 bytes of an 8 KB trailer.
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: an abandoned import's rollback is not "never retrieved"


async def _next_message(requests: AsyncIterator[bpb.ImportEntriesRequest]) -> bpb.ImportEntriesRequest | None:
    """The next message of an import, None at its end; DEADLINE_EXCEEDED when the client stops sending."""
    try:
        return await asyncio.wait_for(anext(requests), IMPORT_IDLE_S)
    except StopAsyncIteration:
        return None
    except TimeoutError:
        raise BankServiceError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"the import sent nothing for {IMPORT_IDLE_S:.0f} s: nothing was imported; send the file without pauses",
        ) from None
    except Exception as error:  # noqa: BLE001 - the request stream's own failure, for its interceptor to answer
        raise _RequestStreamFailed(error) from error


# --- import: bytes -> lines -> the import thread ------------------------------------------------


class _ImportAbandoned(Exception):
    """Raised in the import thread when the call ended before the file did: the transaction rolls back."""


_END = object()
_ABANDONED = object()


class _LineFeed:
    """Batches of lines from the event loop to the import thread, at most `capacity` batches in between.

    The event loop waits for room (an asyncio semaphore the thread releases as it takes a
    batch), so a fast client is slowed to the store's pace by flow control instead of
    filling memory; the thread blocks on the queue while the client is slower.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int):
        self._loop = loop
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._room = asyncio.Semaphore(capacity)
        self._closed = False

    async def put(self, batch: list[str], importing: asyncio.Future[Any]) -> None:
        """Hand a batch over once there is room; returns without it when the import already ended (its answer says why)."""
        room = asyncio.ensure_future(self._room.acquire())
        try:
            await asyncio.wait({room, importing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not room.done():
                room.cancel()
        if room.done() and not room.cancelled():
            self._queue.put(batch)

    def end(self) -> None:
        self._close(_END)

    def abandon(self) -> None:
        self._close(_ABANDONED)

    def _close(self, marker: object) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(marker)  # never waits: the queue is unbounded, the semaphore bounds batches

    def lines(self) -> Iterator[str]:
        """The import thread's side: every line, in order, until the end (or _ImportAbandoned)."""
        while True:
            batch = self._queue.get()
            try:
                self._loop.call_soon_threadsafe(self._room.release)
            except RuntimeError:  # the loop closed: the server stopped mid-import
                raise _ImportAbandoned from None
            if batch is _END:
                return
            if batch is _ABANDONED:
                raise _ImportAbandoned
            yield from batch  # type: ignore[misc]


class _LineSplitter:
    """Byte chunks, split anywhere, into batches of whole lines (each ending in its newline).

    The decoder keeps a character cut between chunks; the text after the last newline
    waits for the next chunk. A UTF-8 byte-order mark at the start is dropped (spreadsheets
    write one). Bytes that are not UTF-8 and over-long lines are refused with the line's number.
    """

    def __init__(self, max_line_chars: int, batch_chars: int):
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")("strict")
        self._pending = ""
        self._max_line = max_line_chars
        self._batch_chars = batch_chars
        self.lines = 0  # whole lines handed on

    def feed(self, data: bytes, final: bool = False) -> list[list[str]]:
        try:
            text = self._decoder.decode(data, final)
        except UnicodeDecodeError as error:
            # Lines before this chunk, plus those of the chunk before the bad byte (the decoder's
            # buffer, at the start of error.object, holds at most a cut character, never a newline).
            line = self.lines + error.object[: error.start].count(b"\n") + 1
            raise invalid(
                f"line {line} is not UTF-8 text (byte 0x{error.object[error.start]:02x}): nothing was imported; save the file as UTF-8"
            ) from None
        text = self._pending + text
        parts = text.split("\n")
        self._pending = parts.pop()
        if final and self._pending:
            parts.append(self._pending)  # the last line, without a newline
            self._pending = ""
        batches: list[list[str]] = []
        batch: list[str] = []
        size = 0
        for part in parts:
            self.lines += 1
            if len(part) > self._max_line:
                raise self._too_long(self.lines)
            batch.append(part + "\n")
            size += len(part) + 1
            if size >= self._batch_chars:
                batches.append(batch)
                batch, size = [], 0
        if batch:
            batches.append(batch)
        if len(self._pending) > self._max_line:
            raise self._too_long(self.lines + 1)
        return batches

    def finish(self) -> list[list[str]]:
        return self.feed(b"", final=True)

    def _too_long(self, line: int) -> BankServiceError:
        return invalid(
            f"line {line} is longer than {self._max_line:,} characters: nothing was imported; "
            "an import is lines of content_id,signal_type,value[,quality[,note]]"
        )


# --- export ----------------------------------------------------------------------------------


class _ExportChunks:
    """A bank's entries as import lines, about `chunk_bytes` at a time (`next` runs in a thread; b'' at the end)."""

    def __init__(self, entries: Iterator[StoredEntry], kind: str | None, chunk_bytes: int):
        self._entries = entries
        self._kind = kind
        self._chunk_bytes = chunk_bytes
        self._header_sent = False
        self._lock = threading.Lock()  # one chunk at a time, whichever pool thread runs it

    def next(self) -> bytes:
        with self._lock:
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            if not self._header_sent:
                # The header also keeps a first entry whose content id is "content_id" from being read as one.
                out.write(EXPORT_HEADER)
                self._header_sent = True
            for entry in self._entries:
                if self._kind is not None and entry.signal_type != self._kind:
                    continue
                writer.writerow(export_row(entry))
                if out.tell() >= self._chunk_bytes:
                    break
            return out.getvalue().encode("utf-8")


def export_row(entry: StoredEntry) -> tuple[str, str, str, str, str]:
    """One entry as ImportEntries reads it: hashes as hex, an embedding as its float32 numbers (shortest exact form)."""
    if entry.signal_type == "embedding":
        value = " ".join(str(number) for number in np.frombuffer(entry.value, dtype="<f4"))  # type: ignore[arg-type]
    else:
        value = str(entry.value)
    return entry.content_id, entry.signal_type, value, "" if entry.quality is None else str(entry.quality), entry.note
