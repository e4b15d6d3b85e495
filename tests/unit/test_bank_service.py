"""BankService's pure parts (lines from chunks, the refusal message, export rows) and a server without a store.

The flows through the real server are tests/integration/test_bank_service.py.
"""

from __future__ import annotations

import csv
import io

import grpc
import numpy as np
import pytest

from moderation.serving.admission import Admission
from moderation.serving.auth import TokenAuth
from moderation.serving.bank_service import (
    NO_STORE,
    REPORTED_BAD_LINES,
    BankServiceError,
    BankServicer,
    _LineSplitter,
    export_row,
    rejection_message,
)
from moderation.serving.interceptors import AdmissionInterceptor, TokenAuthInterceptor
from moderation.state.banks import ImportRejected, StoredEntry
from moderation.v1 import banks_pb2 as bpb
from moderation.v1 import banks_pb2_grpc as bpb_grpc

TEXT = "content_id,signal_type,value\nc1,md5,00112233445566778899aabbccddeeff,,café ☕\r\nc2,pdq,ab\n\nlast,md5,no newline"


def split(data: bytes, cuts: list[int], max_line: int = 1000, batch_chars: int = 10) -> list[str]:
    splitter = _LineSplitter(max_line, batch_chars)
    lines: list[str] = []
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        lines.extend(line for batch in splitter.feed(data[start:end]) for line in batch)
    lines.extend(line for batch in splitter.finish() for line in batch)
    assert splitter.lines == len(lines)
    return lines


def test_lines_come_out_whole_wherever_the_chunks_are_cut() -> None:
    data = TEXT.encode()
    expected = ["content_id,signal_type,value\n", "c1,md5,00112233445566778899aabbccddeeff,,café ☕\r\n", "c2,pdq,ab\n", "\n", "last,md5,no newline\n"]
    assert split(data, []) == expected
    for cut in range(1, len(data)):  # every byte boundary: inside lines, inside é and ☕, at newlines
        assert split(data, [cut]) == expected, cut
    assert split(data, list(range(1, len(data)))) == expected  # one byte a chunk
    assert split(b"\xef\xbb\xbf" + data, [1, 2]) == expected  # a spreadsheet's byte-order mark, itself cut


def test_bytes_that_are_not_utf8_and_long_lines_are_refused_by_line_number() -> None:
    data = "a\nb\ncafé\n".encode("latin-1")
    with pytest.raises(BankServiceError) as caught:
        split(data, [3])
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and "line 3 is not UTF-8 text (byte 0xe9)" in caught.value.message
    with pytest.raises(BankServiceError, match="line 2 is not UTF-8"):
        split(b"ok\n\xe2\x98", [])  # the file ends inside a character
    with pytest.raises(BankServiceError, match="line 2 is longer than 20 characters"):
        split(b"short\n" + b"x" * 30 + b"\n", [], max_line=20)
    with pytest.raises(BankServiceError, match="line 2 is longer than 20 characters"):
        split(b"short\n" + b"x" * 30, [8, 16], max_line=20)  # no newline yet: refused before it grows further


def test_the_refusal_names_the_first_bad_lines_and_stays_small() -> None:
    errors = [(n, f"quality is a whole number from 0 to 100; got {'🙂' * 300!r}") for n in range(3, 103)]
    message = rejection_message(ImportRejected("partner.csv", 250, errors))
    assert message.startswith("partner.csv: 250 bad lines, nothing was imported: line 3: ")
    assert message.count("line ") == REPORTED_BAD_LINES and message.endswith("(and 240 more)")
    assert message.isascii() and len(message) < 2500
    assert rejection_message(ImportRejected("f", 1, [(7, "bad")])) == "f: 1 bad line, nothing was imported: line 7: bad"


def test_export_rows_read_back_as_the_same_entries() -> None:
    vector = np.array([0.1, -0.25, 1e-8, 3.0, 1 / 3], dtype="<f4")
    entries = [
        StoredEntry("b", 'odd, "id"', "md5", "00112233445566778899aabbccddeeff", None, "line one\nline two", "token:x", 0.0, 1),
        StoredEntry("b", "v", "embedding", vector.tobytes(), None, "", "token:x", 0.0, 1),
        StoredEntry("b", "p", "pdq", "ab" * 32, 87, "", "token:x", 0.0, 1),
    ]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(export_row(e) for e in entries)
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0] == ['odd, "id"', "md5", "00112233445566778899aabbccddeeff", "", "line one\nline two"]
    assert np.array_equal(np.array(rows[1][2].split(), dtype=np.float64).astype("<f4"), vector)  # exact float32s
    assert rows[2][3] == "87"


async def test_without_a_state_store_every_call_says_what_to_set_and_none_takes_a_request_slot() -> None:
    """The real interceptors and servicer in-process (the app's wiring runs in tests/integration/test_bank_service.py):
    curation calls are refused while loading and draining like moderation calls, but hold no request slot."""
    token = "curator-token-0123456789"
    admission = Admission(limit=1)
    held = admission.try_acquire("moderation traffic")  # every request slot taken
    assert held is not None
    interceptors = [
        TokenAuthInterceptor(None, curation=TokenAuth({"curator": token.encode()})),
        AdmissionInterceptor(admission, ("moderation.v1.ModerationService",), "still loading", unmetered=("moderation.v1.BankService",)),
    ]
    server = grpc.aio.server(interceptors=interceptors)
    servicer = BankServicer(None, max_image_bytes=1 << 20, default_deadline_s=5, import_max_bytes=1 << 20)
    bpb_grpc.add_BankServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = bpb_grpc.BankServiceStub(channel)
            metadata = (("authorization", f"Bearer {token}"),)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ListBanks(bpb.ListBanksRequest(), metadata=metadata)
            assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.UNAVAILABLE, "still loading")
            admission.loaded = True
            calls = [
                stub.ListBanks(bpb.ListBanksRequest(), metadata=metadata),
                stub.ImportEntries(iter([bpb.ImportEntriesRequest(bank="b", data=b"x")]), metadata=metadata),
            ]
            for call in calls:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                assert (caught.value.code(), caught.value.details()) == (grpc.StatusCode.FAILED_PRECONDITION, NO_STORE)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in stub.ExportEntries(bpb.ExportEntriesRequest(bank="b"), metadata=metadata):
                    pass
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert admission.held == 1  # only the slot taken above
            admission.draining = True
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ListBanks(bpb.ListBanksRequest(), metadata=metadata)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in caught.value.details()
    finally:
        await server.stop(None)
        await servicer.close()
