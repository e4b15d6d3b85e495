"""BankService through the real server: curating banks over gRPC and with `moderation bank ...` (issue 20).

One module server with a SQLite state store, a 0.2 s bank refresh, a moderation token
file and a curation token file; the tests call it with the generated client as a curator
would, and check what the store and the server's own indexes (Lookup) then hold. A
second, bare server (the session's, no curation tokens) shows curation off, and one
test runs the same flow against a real PostgreSQL.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from click.testing import Result
from typer.testing import CliRunner

from moderation.cli import app
from moderation.signals.banks.hashing import md5_hex, sha256_hex
from moderation.v1 import banks_pb2 as bpb
from moderation.v1 import banks_pb2_grpc as bpb_grpc
from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc
from tests import images
from tests.conftest import POLICIES, TINY_CLIP
from tests.integration.server import RunningServer, running_server
from tests.postgres import PostgresServer, postgres_for_test

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODERATOR_TOKEN = "moderator-token-0123456789"
CURATOR_TOKEN = "curator-token-0123456789abc"
IMPORT_MAX_BYTES = 100_000
PDQ_A = "f" * 32 + "0" * 32
PDQ_B = "0f" * 32
MD5_A = "0123456789abcdef" * 2
SHA_A = "ab" * 32


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


CURATOR = bearer(CURATOR_TOKEN)
MODERATOR = bearer(MODERATOR_TOKEN)


def server_env(root: Path, **extra: str) -> dict[str, str]:
    (root / "moderators").write_text(f"moderator:{MODERATOR_TOKEN}\n")
    (root / "curators").write_text(f"# who may change the banks\ncurator:{CURATOR_TOKEN}\n")
    return {
        "MODERATION_CLIP_MODEL": f"local-dir:{TINY_CLIP}",
        "MODERATION_CLIP_WEIGHTS": "random",
        "MODERATION_POLICIES": str(POLICIES),
        "MODERATION_BANK_REFRESH_S": "0.2",
        "MODERATION_AUTH_TOKENS_FILE": str(root / "moderators"),
        "MODERATION_CURATION_TOKENS_FILE": str(root / "curators"),
        "MODERATION_BANK_IMPORT_MAX_BYTES": str(IMPORT_MAX_BYTES),
        **extra,
    }


@dataclass
class Curation:
    server: RunningServer
    channel: grpc.Channel
    stub: bpb_grpc.BankServiceStub

    def __getattr__(self, method: str):  # noqa: ANN204 - curator.CreateBank(request): the stub's call with the curation token
        call = getattr(self.stub, method)
        return lambda request, **kw: call(request, metadata=kw.pop("metadata", CURATOR), timeout=kw.pop("timeout", 30), **kw)

    def refused(self, method: str, *args: object, **kw: object) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            result = getattr(self, method)(*args, **kw)
            if method == "ExportEntries":
                list(result)
        return caught.value

    def import_chunks(self, bank: str, chunks: list[bytes], source: str = "test.csv", **kw: object) -> bpb.ImportEntriesResponse:
        messages = [bpb.ImportEntriesRequest(bank=bank if i == 0 else "", source=source if i == 0 else "", data=c) for i, c in enumerate(chunks)]
        return self.ImportEntries(iter(messages), **kw)

    def export(self, bank: str) -> bytes:
        return b"".join(chunk.data for chunk in self.ExportEntries(bpb.ExportEntriesRequest(bank=bank)))

    def counts(self, bank: str) -> dict[str, int]:
        [found] = [b for b in self.ListBanks(bpb.ListBanksRequest()).banks if b.name == bank]
        return dict(found.entries)

    def settled(self, version: int, timeout_s: float = 20.0) -> None:
        """Wait until the server's indexes (what Lookup and requests see) hold this bank version."""
        deadline = time.monotonic() + timeout_s
        while bank_version(self.server) < version:
            assert time.monotonic() < deadline, f"the server did not reach bank version {version}"
            time.sleep(0.05)


def bank_version(server: RunningServer) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    return float(re.search(r"^moderation_bank_version (\S+)$", text, re.M).group(1))


def curation_for(server: RunningServer) -> Iterator[Curation]:
    with server.channel() as channel:
        yield Curation(server, channel, bpb_grpc.BankServiceStub(channel))


@pytest.fixture(scope="module")
def curation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Curation]:
    root = tmp_path_factory.mktemp("bank-service")
    with running_server(root, env=server_env(root, MODERATION_EMBEDDING_STORE=str(root / "state.db"))) as server:
        yield from curation_for(server)


def run_cli(server: RunningServer, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`moderation bank ...` as a curator runs it: its own process, the token from a file named by the environment."""
    token = tmp_path / "curation-token"
    token.write_text(CURATOR_TOKEN + "\n")
    env = {
        "MODERATION_CLIENT_CURATION_TOKEN_FILE": str(token), "COLUMNS": "200", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
        "HOME": str(tmp_path),
    }  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "moderation", "bank", *args, "--target", server.target], capture_output=True, text=True, env=env, timeout=60
    )


# --- scopes ------------------------------------------------------------------------------------


def test_a_moderation_token_cannot_curate_and_a_curation_token_cannot_moderate(curation: Curation) -> None:
    for method, request in [
        ("ListBanks", bpb.ListBanksRequest()),
        ("ExportEntries", bpb.ExportEntriesRequest(bank="any")),  # server streaming: wrapped by the interceptors too
    ]:
        error = curation.refused(method, request, metadata=MODERATOR)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, method
        assert "may moderate but not curate" in error.details() and "curation_tokens_file" in error.details()
        error = curation.refused(method, request, metadata=())
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "curation token" in error.details(), method
    # Client streaming (ImportEntries) too, and nothing reaches the store.
    error = curation.refused("ImportEntries", iter([bpb.ImportEntriesRequest(bank="none", data=b"x,md5," + MD5_A.encode())]), metadata=MODERATOR)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    error = curation.refused("CreateBank", bpb.CreateBankRequest(name="x"), metadata=bearer("curator-token-0123456789abd"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED

    moderation = pb_grpc.ModerationServiceStub(curation.channel)
    with pytest.raises(grpc.RpcError) as caught:
        moderation.ListPolicies(pb.ListPoliciesRequest(), metadata=CURATOR, timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED and "may curate banks but not moderate" in caught.value.details()
    assert moderation.ListPolicies(pb.ListPoliciesRequest(), metadata=MODERATOR, timeout=10).policies
    assert curation.ListBanks(bpb.ListBanksRequest()).version >= 0


def test_reflection_lists_bank_service(curation: Curation) -> None:
    """So grpcurl can describe and call it (reflection is open; the calls still need a curation token)."""
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    services = ProtoReflectionDescriptorDatabase(curation.channel).get_services()
    assert {"moderation.v1.BankService", "moderation.v1.ModerationService"} <= set(services)


def test_without_curation_tokens_bank_curation_is_off(server: RunningServer) -> None:
    """The session's plain server: no curation_tokens_file (and no store)."""
    with server.channel() as channel:
        with pytest.raises(grpc.RpcError) as caught:
            bpb_grpc.BankServiceStub(channel).ListBanks(bpb.ListBanksRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == "bank curation is off: set MODERATION_CURATION_TOKENS_FILE"


# --- banks -------------------------------------------------------------------------------------


def test_create_list_disable_and_update(curation: Curation) -> None:
    created = curation.CreateBank(bpb.CreateBankRequest(name="scope-test", note="first list")).bank
    assert (created.enabled, created.pdq_max_distance, created.pdq_min_quality, created.matching_ratio) == (True, 31, 50, 1.0)
    assert not created.HasField("embedding_min_cosine") and created.created_by == "token:curator"

    error = curation.refused("CreateBank", bpb.CreateBankRequest(name="scope-test"))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS and "already exists" in error.details()
    error = curation.refused("CreateBank", bpb.CreateBankRequest(name="other", matching_ratio=1.5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "matching_ratio is 0 to 1" in error.details()
    error = curation.refused("CreateBank", bpb.CreateBankRequest(name=""))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "bank name" in error.details()

    listed = curation.ListBanks(bpb.ListBanksRequest())
    assert "scope-test" in [b.name for b in listed.banks] and listed.version >= 1

    disabled = curation.UpdateBank(bpb.UpdateBankRequest(name="scope-test", enabled=False, reason="false positives")).bank
    assert not disabled.enabled and disabled.pdq_max_distance == 31  # kept, not deleted
    updated = curation.UpdateBank(bpb.UpdateBankRequest(name="scope-test", pdq_max_distance=20, matching_ratio=0.25, embedding_min_cosine=0.9)).bank
    assert (updated.pdq_max_distance, updated.matching_ratio, updated.embedding_min_cosine, updated.enabled) == (20, 0.25, 0.9, False)

    for request, code, words in [
        (bpb.UpdateBankRequest(name="scope-test"), grpc.StatusCode.INVALID_ARGUMENT, "changes nothing"),
        (bpb.UpdateBankRequest(name="no-such-bank", enabled=True), grpc.StatusCode.NOT_FOUND, "no bank named 'no-such-bank'"),
        (bpb.UpdateBankRequest(name="scope-test", pdq_min_quality=101), grpc.StatusCode.INVALID_ARGUMENT, "pdq_min_quality is 0 to 100"),
        (bpb.UpdateBankRequest(name="scope-test", embedding_min_cosine=2), grpc.StatusCode.INVALID_ARGUMENT, "embedding_min_cosine is -1 to 1"),
    ]:
        error = curation.refused("UpdateBank", request)
        assert error.code() == code and words in error.details(), (request, error.details())
    assert curation.UpdateBank(bpb.UpdateBankRequest(name="scope-test", enabled=True)).bank.enabled


def test_add_by_hash_skips_duplicates_refuses_bad_values_and_lookup_and_remove_follow(curation: Curation) -> None:
    curation.CreateBank(bpb.CreateBankRequest(name="hashes"))

    def add(kind: int, value: str, content_id: str = "case-1", **hash_fields: object) -> bpb.AddContentResponse:
        request = bpb.AddContentRequest(bank="hashes", content_id=content_id, note="seen twice", hash=bpb.BankHash(signal_type=kind, value=value, **hash_fields))
        return curation.AddContent(request)

    first = add(pb.BANK_SIGNAL_TYPE_PDQ, PDQ_A.upper(), quality=90)
    assert (first.added, first.skipped) == (1, 0) and first.hashes[0].value == PDQ_A  # canonical lowercase
    again = add(pb.BANK_SIGNAL_TYPE_PDQ, PDQ_A, content_id="case-2")
    assert (again.added, again.skipped) == (0, 1)
    add(pb.BANK_SIGNAL_TYPE_MD5, MD5_A)
    assert curation.counts("hashes") == {"pdq": 1, "md5": 1}

    for kind, value, extra, words in [
        (pb.BANK_SIGNAL_TYPE_PDQ, PDQ_A[:-1] + "g", {}, "hash.value: a PDQ hash is written in hexadecimal (0-9, a-f); character 64"),
        (pb.BANK_SIGNAL_TYPE_PDQ, PDQ_A[:-2], {}, "hash.value: a PDQ hash is 64 hexadecimal characters; got 62"),
        (pb.BANK_SIGNAL_TYPE_MD5, SHA_A, {}, "hash.value: an MD5 hash is 32 hexadecimal characters; got 64"),
        (pb.BANK_SIGNAL_TYPE_PDQ, PDQ_B, {"quality": 101}, "hash.quality is a PDQ quality from 0 to 100; got 101"),
        (pb.BANK_SIGNAL_TYPE_UNSPECIFIED, MD5_A, {}, "hash.signal_type is unset"),
        (pb.BANK_SIGNAL_TYPE_EMBEDDING, "1 2 3", {}, "an embedding is not a hash"),
    ]:
        error = curation.refused("AddContent", bpb.AddContentRequest(bank="hashes", content_id="c", hash=bpb.BankHash(signal_type=kind, value=value, **extra)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and words in error.details(), error.details()
    error = curation.refused("AddContent", bpb.AddContentRequest(bank="hashes", content_id="c"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "set image" in error.details()
    error = curation.refused("AddContent", bpb.AddContentRequest(bank="hashes", content_id=" ", hash=bpb.BankHash(signal_type=pb.BANK_SIGNAL_TYPE_MD5, value=MD5_A)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "content_id is empty" in error.details()
    error = curation.refused("AddContent", bpb.AddContentRequest(bank="nope", content_id="c", hash=bpb.BankHash(signal_type=pb.BANK_SIGNAL_TYPE_MD5, value=MD5_A)))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "no bank named 'nope'" in error.details()
    assert curation.counts("hashes") == {"pdq": 1, "md5": 1}  # nothing refused was added

    # Lookup answers from the server's indexes: once they hold the change, a PDQ 3 bits away matches.
    curation.settled(curation.ListBanks(bpb.ListBanksRequest()).version)
    near = f"{int(PDQ_A, 16) ^ 0b10101:064x}"
    [match] = curation.Lookup(bpb.LookupRequest(hash=bpb.BankHash(signal_type=pb.BANK_SIGNAL_TYPE_PDQ, value=near), banks=["hashes"])).matches
    assert (match.bank, match.content_id, match.signal_type, match.distance, match.threshold) == ("hashes", "case-1", pb.BANK_SIGNAL_TYPE_PDQ, 3, 31)
    assert (match.category_id, match.clause_id, match.action) == ("", "", pb.ACTION_UNSPECIFIED)
    error = curation.refused("Lookup", bpb.LookupRequest(hash=bpb.BankHash(signal_type=pb.BANK_SIGNAL_TYPE_MD5, value=MD5_A), banks=["hashes", "nope"]))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "'nope'" in error.details()

    removed = curation.RemoveContent(bpb.RemoveContentRequest(bank="hashes", content_id="case-1", signal_type=pb.BANK_SIGNAL_TYPE_PDQ))
    assert removed.removed == 1 and curation.counts("hashes") == {"md5": 1}
    curation.settled(removed.version)
    assert not curation.Lookup(bpb.LookupRequest(hash=bpb.BankHash(signal_type=pb.BANK_SIGNAL_TYPE_PDQ, value=near))).matches
    assert curation.RemoveContent(bpb.RemoveContentRequest(bank="hashes", content_id="case-1")).removed == 1
    error = curation.refused("RemoveContent", bpb.RemoveContentRequest(bank="hashes"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "content_id is empty" in error.details()


def test_add_and_lookup_by_image_use_the_servers_hashes_and_embeddings(curation: Curation) -> None:
    curation.CreateBank(bpb.CreateBankRequest(name="images", embedding_min_cosine=0.99))
    curation.CreateBank(bpb.CreateBankRequest(name="hashes-only"))
    photo = images.astronaut_jpeg()
    added = curation.AddContent(bpb.AddContentRequest(bank="images", content_id="astronaut", image=photo))
    # MD5, SHA-256, one PDQ (a still image: one frame) and, the bank having a cosine, one embedding.
    assert (added.added, added.skipped) == (4, 0)
    kinds = {h.signal_type: h for h in added.hashes}
    assert kinds[pb.BANK_SIGNAL_TYPE_MD5].value == md5_hex(photo) and kinds[pb.BANK_SIGNAL_TYPE_SHA256].value == sha256_hex(photo)
    assert kinds[pb.BANK_SIGNAL_TYPE_PDQ].quality >= 50
    assert curation.counts("images") == {"md5": 1, "sha256": 1, "pdq": 1, "embedding": 1}
    hashes_only = curation.AddContent(bpb.AddContentRequest(bank="hashes-only", content_id="astronaut", image=photo))
    assert hashes_only.added == 3 and "embedding" not in curation.counts("hashes-only")

    curation.settled(hashes_only.version)
    found = curation.Lookup(bpb.LookupRequest(image=photo, banks=["images"]))
    assert sorted(pb.BankSignalType.Name(m.signal_type) for m in found.matches) == [
        "BANK_SIGNAL_TYPE_EMBEDDING", "BANK_SIGNAL_TYPE_MD5", "BANK_SIGNAL_TYPE_PDQ", "BANK_SIGNAL_TYPE_SHA256",
    ]  # fmt: skip
    assert {m.content_id for m in found.matches} == {"astronaut"}
    embedding = next(m for m in found.matches if m.signal_type == pb.BANK_SIGNAL_TYPE_EMBEDDING)
    assert embedding.distance == pytest.approx(1.0, abs=1e-4) and embedding.threshold == pytest.approx(0.99)
    assert {m.bank for m in curation.Lookup(bpb.LookupRequest(image=photo)).matches} == {"images", "hashes-only"}

    error = curation.refused("AddContent", bpb.AddContentRequest(bank="images", content_id="junk", image=b"not an image at all"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("invalid image:")
    error = curation.refused("Lookup", bpb.LookupRequest(image=b""))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "image field is empty" in error.details()


# --- import and export -------------------------------------------------------------------------


GOOD_LINES = (
    "content_id,signal_type,value,quality,note\n"
    f"case-10,pdq,{PDQ_A},80,from the partner list\n"
    f"case-11,md5,{MD5_A},,\n"
    f"case-12,sha256,{SHA_A}\n"
    "# a comment\n"
    f'"case,13",pdq,{PDQ_B},60,"note with a comma, a ""quote"" and café ☕"\n'
)


def test_an_import_with_bad_lines_names_them_and_applies_nothing_then_a_good_one_applies_all(curation: Curation) -> None:
    curation.CreateBank(bpb.CreateBankRequest(name="imported"))
    bad = GOOD_LINES + f"case-14,pdq,{PDQ_A[:10]}\n" + "case-15,sha1,abc\n" + f"case-16,md5,{MD5_A},101\n"
    error = curation.refused("import_chunks", "imported", [bad.encode()])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "test.csv: 3 bad lines, nothing was imported" in error.details()
    assert [int(n) for n in re.findall(r"\bline (\d+):", error.details())] == [7, 8, 9]
    assert curation.counts("imported") == {}

    many_bad = "".join(f"bad-{i},pdq,zz\n" for i in range(40))
    error = curation.refused("import_chunks", "imported", [many_bad.encode()])
    assert "40 bad lines" in error.details() and "(and 30 more)" in error.details() and len(error.details()) < 3000
    assert curation.counts("imported") == {}

    done = curation.import_chunks("imported", [GOOD_LINES.encode()])
    assert (done.lines, done.added, done.skipped) == (4, 4, 0)
    assert curation.counts("imported") == {"pdq": 2, "md5": 1, "sha256": 1}
    again = curation.import_chunks("imported", [GOOD_LINES.encode()])
    assert (again.lines, again.added, again.skipped) == (4, 0, 4)

    error = curation.refused("import_chunks", "no-such-bank", [GOOD_LINES.encode()])
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = curation.refused("ImportEntries", iter([bpb.ImportEntriesRequest(data=GOOD_LINES.encode())]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "names the bank" in error.details()


def test_chunks_split_inside_a_line_and_inside_a_character_import_whole(curation: Curation) -> None:
    curation.CreateBank(bpb.CreateBankRequest(name="chunked"))
    data = GOOD_LINES.encode()
    inside_line = data.index(PDQ_A.encode()) + 10
    inside_char = data.index("☕".encode()) + 1  # the second of its three bytes
    chunks = [data[:inside_line], data[inside_line:inside_char], data[inside_char:]]
    assert all(chunks)
    done = curation.import_chunks("chunked", chunks)
    assert (done.lines, done.added) == (4, 4)
    exported = curation.export("chunked").decode()
    assert 'note with a comma, a ""quote"" and café ☕' in exported

    # One byte a message, a file that is no UTF-8 at line 3, one over the byte bound: each refused, nothing applied.
    curation.CreateBank(bpb.CreateBankRequest(name="chunked-2"))
    assert curation.import_chunks("chunked-2", [bytes([b]) for b in data]).added == 4
    latin1 = GOOD_LINES.replace("café ☕", "café").encode("latin-1")
    error = curation.refused("import_chunks", "chunked-3", [latin1])
    assert error.code() == grpc.StatusCode.NOT_FOUND  # the bank is checked first
    curation.CreateBank(bpb.CreateBankRequest(name="chunked-3"))
    error = curation.refused("import_chunks", "chunked-3", [latin1[:50], latin1[50:]])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "line 6 is not UTF-8 text (byte 0xe9)" in error.details()
    big = [(f"big-{i},md5,{i:032x}\n" * 1000).encode() for i in range(3)]  # about 46 KB each
    error = curation.refused("import_chunks", "chunked-3", big)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"over {IMPORT_MAX_BYTES:,} bytes (setting bank_import_max_bytes): nothing was imported" in error.details()
    # A message that is no protobuf mid-import: refused as any malformed request is, the lines before it not applied.
    raw = curation.channel.stream_unary("/moderation.v1.BankService/ImportEntries", request_serializer=None, response_deserializer=None)
    first = bpb.ImportEntriesRequest(bank="chunked-3", data=GOOD_LINES.encode()).SerializeToString()
    with pytest.raises(grpc.RpcError) as caught:
        raw(iter([first, b"\xff\xff\xff"]), metadata=CURATOR, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "the request is not a valid moderation.v1.ImportEntriesRequest message"
    assert curation.counts("chunked-3") == {}
    assert "Traceback" not in curation.server.log_text()


def test_export_then_import_into_a_new_bank_gives_the_same_entries(curation: Curation) -> None:
    curation.CreateBank(bpb.CreateBankRequest(name="original", embedding_min_cosine=0.9))
    embedding = " ".join(str(x) for x in (0.1, -0.25, 1e-8, 3.0))
    lines = GOOD_LINES + f"case-20,embedding,{embedding},,a vector\n" + "content_id,md5,ffffffffffffffffffffffffffffffff\n"
    assert curation.import_chunks("original", [lines.encode()]).added == 6
    exported = curation.export("original")
    assert exported.startswith(b"content_id,signal_type,value,quality,note\n")
    curation.CreateBank(bpb.CreateBankRequest(name="copy", embedding_min_cosine=0.9))
    assert curation.import_chunks("copy", [exported], source="original.csv").added == 6
    assert curation.export("copy") == exported
    assert curation.counts("copy") == curation.counts("original") == {"pdq": 2, "md5": 2, "sha256": 1, "embedding": 1}
    only_md5 = b"".join(c.data for c in curation.ExportEntries(bpb.ExportEntriesRequest(bank="copy", signal_type=pb.BANK_SIGNAL_TYPE_MD5)))
    assert only_md5.count(b"\n") == 3
    error = curation.refused("ExportEntries", bpb.ExportEntriesRequest(bank="nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_audit_rows_name_the_callers_token(curation: Curation) -> None:
    curation.CreateBank(bpb.CreateBankRequest(name="audited"))
    curation.import_chunks("audited", [GOOD_LINES.encode()], source="partner.csv")
    curation.UpdateBank(bpb.UpdateBankRequest(name="audited", matching_ratio=0.5, reason="rolling out"))
    rows = curation.GetAudit(bpb.GetAuditRequest(bank="audited")).entries
    assert [r.action for r in rows] == ["settings", "import", "create"]
    assert {r.who for r in rows} == {"token:curator"} and rows[1].count == 4
    assert "partner.csv" in rows[1].detail and "rolling out" in rows[0].detail
    assert len(curation.GetAudit(bpb.GetAuditRequest(limit=2)).entries) == 2
    error = curation.refused("GetAudit", bpb.GetAuditRequest(limit=5000))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit is 1 to 1000" in error.details()


# --- the CLI -----------------------------------------------------------------------------------


def test_the_bank_commands_against_the_server(curation: Curation, tmp_path: Path) -> None:
    """A few commands as their own processes (what a curator runs); the rest in-process, where the CLI's start costs nothing."""
    server = curation.server
    created = run_cli(server, tmp_path, "create", "cli-bank", "--note", "from the CLI")
    assert created.returncode == 0 and "created bank cli-bank (enabled)" in created.stdout, created.stderr
    bad = tmp_path / "list.csv"
    bad.write_text(GOOD_LINES + "x,pdq,zz\n" + GOOD_LINES.splitlines()[1] + "\n" + "y,md5\n")
    rejected = run_cli(server, tmp_path, "import", "cli-bank", str(bad))
    assert rejected.returncode == 1 and "INVALID_ARGUMENT: list.csv: 2 bad lines" in rejected.stderr, rejected.stderr
    assert "bad lines: 7, 9" in rejected.stderr

    token = tmp_path / "curation-token"

    def cli(*args: str) -> Result:
        return CliRunner().invoke(
            app, ["bank", *args, "--target", server.target], env={"MODERATION_CLIENT_CURATION_TOKEN_FILE": str(token), "COLUMNS": "200"}
        )

    refused = cli("create", "cli-bank")
    assert refused.exit_code == 1 and "ALREADY_EXISTS: bank 'cli-bank' already exists" in refused.output
    added = cli("add", "cli-bank", "case-1", "--pdq", PDQ_A, "--quality", "90")
    assert added.exit_code == 0 and "1 added, 0 already there" in added.output, added.output
    usage = cli("add", "cli-bank", "case-1", "--pdq", PDQ_A, "--md5", MD5_A)
    assert usage.exit_code == 2 and "exactly one of" in usage.output
    good = tmp_path / "good.csv"
    good.write_text(GOOD_LINES)
    imported = cli("import", "cli-bank", str(good))
    assert imported.exit_code == 0 and "4 lines, 3 added, 1 skipped" in imported.output, imported.output

    exported = run_cli(server, tmp_path, "export", "cli-bank")
    assert exported.returncode == 0 and exported.stdout.startswith("content_id,signal_type,value,quality,note\n")
    assert exported.stdout.count("\n") == 5 and "café ☕" in exported.stdout
    listed = cli("list")
    assert listed.exit_code == 0
    [row] = [line for line in listed.output.splitlines() if "cli-bank" in line]
    assert re.search(r"cli-bank\W+yes\W+2\W+1\W+1\W+0\W", row), listed.output
    audit = cli("audit", "cli-bank")
    assert audit.exit_code == 0 and "token:curator" in audit.output and "import" in audit.output


# --- PostgreSQL ----------------------------------------------------------------------------------


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    yield from postgres_for_test()


def test_the_same_curation_against_postgresql(postgres: PostgresServer, tmp_path: Path) -> None:
    """Create, add, refused and abandoned imports (the COPY rolled back, the connection usable after), a good
    import, the export round trip, audit and lookup, with the banks in a real PostgreSQL."""
    url = postgres.create_database("banks")
    with running_server(tmp_path, env=server_env(tmp_path, MODERATION_DATABASE_URL=url)) as server, server.channel() as channel:
        curation = Curation(server, channel, bpb_grpc.BankServiceStub(channel))
        curation.CreateBank(bpb.CreateBankRequest(name="pg"))
        added = curation.AddContent(bpb.AddContentRequest(bank="pg", content_id="one", hash=bpb.BankHash(signal_type=pb.BANK_SIGNAL_TYPE_MD5, value=MD5_A)))
        assert added.added == 1
        error = curation.refused("import_chunks", "pg", [(GOOD_LINES + "x,pdq,zz\n").encode()])
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and re.findall(r"\bline (\d+):", error.details()) == ["7"]
        over = [(f"big-{i},md5,{i:032x}\n" * 1000).encode() for i in range(3)]
        error = curation.refused("import_chunks", "pg", over)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "bank_import_max_bytes" in error.details()
        assert curation.counts("pg") == {"md5": 1}
        done = curation.import_chunks("pg", [GOOD_LINES.encode()[:100], GOOD_LINES.encode()[100:]])
        assert (done.lines, done.added, done.skipped) == (4, 3, 1)  # MD5_A is there already
        exported = curation.export("pg")
        curation.CreateBank(bpb.CreateBankRequest(name="pg-copy"))
        assert curation.import_chunks("pg-copy", [exported]).added == 4
        assert curation.export("pg-copy") == exported
        assert [r.who for r in curation.GetAudit(bpb.GetAuditRequest(bank="pg")).entries] == ["token:curator"] * 3
        curation.settled(curation.ListBanks(bpb.ListBanksRequest()).version)
        [match] = curation.Lookup(bpb.LookupRequest(hash=bpb.BankHash(signal_type=pb.BANK_SIGNAL_TYPE_SHA256, value=SHA_A), banks=["pg"])).matches
        assert (match.content_id, match.signal_type) == ("case-12", pb.BANK_SIGNAL_TYPE_SHA256)
        # A second replica on the same database: it starts with the banks, and what one replica
        # changes the other matches once its refresh (0.2 s here, 2 s by default) has run.
        with running_server(tmp_path, env=server_env(tmp_path, MODERATION_DATABASE_URL=url)) as replica, replica.channel() as other_channel:
            other = Curation(replica, other_channel, bpb_grpc.BankServiceStub(other_channel))
            sha_query = bpb.LookupRequest(hash=bpb.BankHash(signal_type=pb.BANK_SIGNAL_TYPE_SHA256, value=SHA_A), banks=["pg"])
            assert [m.content_id for m in other.Lookup(sha_query).matches] == ["case-12"]
            late = bpb.BankHash(signal_type=pb.BANK_SIGNAL_TYPE_MD5, value="fe" * 16)
            added = curation.AddContent(bpb.AddContentRequest(bank="pg", content_id="late", hash=late))
            other.settled(added.version)
            assert [m.content_id for m in other.Lookup(bpb.LookupRequest(hash=late, banks=["pg"])).matches] == ["late"]
            removed = other.RemoveContent(bpb.RemoveContentRequest(bank="pg", content_id="late"))
            assert removed.removed == 1
            curation.settled(removed.version)
            assert not curation.Lookup(bpb.LookupRequest(hash=late, banks=["pg"])).matches
