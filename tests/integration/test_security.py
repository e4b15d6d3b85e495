"""Bearer tokens, mutual TLS, reflection off, and what the audit log may contain."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc
import pytest

from moderation.v1 import moderation_pb2 as pb
from moderation.v1 import moderation_pb2_grpc as pb_grpc
from tests import images
from tests.conftest import POLICIES, TINY_CLIP
from tests.integration.server import running_server
from tests.integration.test_grpcurl import grpcurl_binary

pytestmark = pytest.mark.integration

TOKEN = "s3cr3t-token-for-upstream-a"
TINY = ("--policies", str(POLICIES), "--model", f"local-dir:{TINY_CLIP}", "--weights", "random")


def audit_lines(log_text: str) -> list[dict]:
    return [json.loads(line) for line in log_text.splitlines() if line.startswith("{") and '"logger": "moderation.audit"' in line]


def test_bearer_tokens_and_audit_metadata_allow_list(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# name:token\nupstream-a:{TOKEN}\n")
    env = {"MODERATION_AUTH_TOKENS_FILE": str(tokens), "MODERATION_AUDIT_METADATA_KEYS": '["tenant"]'}
    with running_server(tmp_path, *TINY, env=env) as server, server.channel() as channel:
        stub = pb_grpc.ModerationServiceStub(channel)
        request = pb.ModerateRequest(request_id="sec-1", image=images.astronaut_jpeg(), metadata={"tenant": "acme", "note": "private-value"})
        for metadata in ((), (("authorization", "Bearer wrong-token-0000000000"),), (("authorization", TOKEN),)):
            with pytest.raises(grpc.RpcError) as caught:
                stub.Moderate(request, metadata=metadata, timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "bearer token" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.ModerateStream(iter([pb.ModerateStreamRequest(request=request)]), timeout=30))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

        response = stub.Moderate(request, metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=30)
        assert response.request_id == "sec-1"

    (line,) = [entry for entry in audit_lines(server.log_text()) if entry["request_id"] == "sec-1"]
    assert line["caller"] == "token:upstream-a"
    assert line["metadata"] == {"tenant": "acme"}
    assert TOKEN not in server.log_text() and "private-value" not in server.log_text()


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(directory: Path) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca", cwd=directory)
    for name, extension in (("server", "subjectAltName=DNS:localhost,IP:127.0.0.1"), ("client-a", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
        (directory / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", f"{name}.pem",
                "-days", "2", "-extfile", f"{name}.ext", cwd=directory)  # fmt: skip


def test_mutual_tls_identity_and_reflection_off(tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.integration.server import free_port

    make_pki(tmp_path)
    health_port = free_port()
    env = {
        "MODERATION_TLS_CERT": str(tmp_path / "server.pem"),
        "MODERATION_TLS_KEY": str(tmp_path / "server.key"),
        "MODERATION_TLS_CLIENT_CA": str(tmp_path / "ca.pem"),
        "MODERATION_REFLECTION": "false",
        "MODERATION_HEALTH_PORT": str(health_port),
        "MODERATION_REFLECTON": "false",  # a typo: reported, not fatal
    }
    ca = (tmp_path / "ca.pem").read_bytes()
    credentials = grpc.ssl_channel_credentials(ca, (tmp_path / "client-a.key").read_bytes(), (tmp_path / "client-a.pem").read_bytes())
    with running_server(tmp_path, *TINY, env=env, credentials=credentials) as server:
        with server.channel() as channel:
            response = pb_grpc.ModerationServiceStub(channel).Moderate(pb.ModerateRequest(request_id="tls-1", image=images.astronaut_jpeg()), timeout=30)
            assert response.categories

        # TLS without a client certificate, and plaintext, are refused during the handshake.
        for channel in (grpc.secure_channel(server.target, grpc.ssl_channel_credentials(ca)), grpc.insecure_channel(server.target)):
            with channel, pytest.raises(grpc.RpcError) as caught:
                pb_grpc.ModerationServiceStub(channel).Moderate(pb.ModerateRequest(image=images.astronaut_jpeg()), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

        listed = subprocess.run(
            [grpcurl_binary(), "-cacert", str(tmp_path / "ca.pem"), "-cert", str(tmp_path / "client-a.pem"), "-key", str(tmp_path / "client-a.key"),
             server.target, "list"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert listed.returncode != 0 and "does not support the reflection API" in listed.stderr

        # Kubelet probes cannot speak TLS: plaintext health on its own port, nothing else there.
        with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="moderation.v1.ModerationService"), timeout=10)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as caught:
                pb_grpc.ModerationServiceStub(channel).Moderate(pb.ModerateRequest(image=images.astronaut_jpeg()), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED

    (line,) = [entry for entry in audit_lines(server.log_text()) if entry["request_id"] == "tls-1"]
    assert line["caller"] == "mtls:client-a"
    assert "MODERATION_REFLECTON is not a setting and is ignored" in server.log_text()
    # grpc-core reports the failed handshake on stderr; in a JSON log it arrives as JSON too.
    entries = [json.loads(line) for line in server.log_text().splitlines()]
    assert any(e["logger"] == "grpc.core" and "Handshake failed" in e["msg"] for e in entries)


def test_auth_failures_are_counted_and_logged_at_a_bounded_rate(tmp_path: Path) -> None:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    tokens = tmp_path / "tokens"
    tokens.write_text(f"upstream-a:{TOKEN}\n")
    env = {"MODERATION_AUTH_TOKENS_FILE": str(tokens), "MODERATION_AUTH_FAILURE_LOGS_PER_MINUTE": "3"}
    good, wrong = ("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer wrong-token-0000000000")
    refused = {
        "missing": [(), (("x-other", "1"),)],
        "invalid": [(wrong,), (wrong,)],
        "malformed": [(("authorization", TOKEN),)],
        # Two authorization headers: whichever one a proxy or the server reads, neither is trusted.
        "duplicate": [(wrong, good), (good, wrong), (good, good)],
    }
    with running_server(tmp_path, *TINY, env=env) as server, server.channel() as channel:
        stub = pb_grpc.ModerationServiceStub(channel)
        request = pb.ModerateRequest(image=images.astronaut_jpeg())
        for reason, cases in refused.items():
            for metadata in cases:
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Moderate(request, metadata=metadata, timeout=30)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, (reason, metadata)
        assert "more than one authorization header" in caught.value.details()
        assert stub.Moderate(request, metadata=(good,), timeout=30).categories
        text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()

    family = next(f for f in text_string_to_metric_families(text) if f.name == "moderation_auth_failures")
    counted = {s.labels["reason"]: s.value for s in family.samples if s.name.endswith("_total")}
    assert counted == {reason: float(len(cases)) for reason, cases in refused.items()}
    lines = [json.loads(line) for line in server.log_text().splitlines() if "refused a call without valid credentials" in line]
    assert len(lines) == 3, "at most auth_failure_logs_per_minute lines"
    assert all(line["peer"].startswith("ipv4:127.0.0.1:") and line["method"] == "ModerationService/Moderate" for line in lines)
    assert TOKEN not in server.log_text()


def explain_serve(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int, Path]:
    import os
    import sys

    from tests.integration.server import free_port

    port = free_port()
    log_path = tmp_path / "explainer.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "moderation", "explain-serve", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0",
             "--policies", str(POLICIES), "--explainer-model", "tiny-smolvlm", "--explainer-weights", "random"],
            stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **env},
        )  # fmt: skip
    return process, port, log_path


def test_explainer_hop_uses_mutual_tls_and_a_token(tmp_path: Path) -> None:
    from tests.integration.server import wait_until_serving

    make_pki(tmp_path)
    tokens = tmp_path / "explainer-tokens"
    tokens.write_text(f"scorer:{TOKEN}\n")
    (tmp_path / "scorer-token").write_text(f"{TOKEN}\n")
    tls = {
        "MODERATION_TLS_CERT": str(tmp_path / "server.pem"),
        "MODERATION_TLS_KEY": str(tmp_path / "server.key"),
        "MODERATION_TLS_CLIENT_CA": str(tmp_path / "ca.pem"),
    }
    ca = (tmp_path / "ca.pem").read_bytes()
    client = grpc.ssl_channel_credentials(ca, (tmp_path / "client-a.key").read_bytes(), (tmp_path / "client-a.pem").read_bytes())
    process, port, log_path = explain_serve(tmp_path, {**tls, "MODERATION_AUTH_TOKENS_FILE": str(tokens)})
    try:
        target = f"localhost:{port}"
        wait_until_serving(target, process, log_path, credentials=client)
        policy = POLICIES / "default.yaml"
        from moderation.policy import load_policy_file

        version = load_policy_file(policy)[0].version
        request = pb.ExplainRequest(image=images.astronaut_jpeg(), policy_id="default", policy_version=version, category_ids=["weapons"])
        # Plaintext and TLS without a client certificate fail the handshake; mTLS without a token is refused.
        for channel in (grpc.insecure_channel(target), grpc.secure_channel(target, grpc.ssl_channel_credentials(ca))):
            with channel, pytest.raises(grpc.RpcError) as caught:
                pb_grpc.ExplainerServiceStub(channel).Explain(request, timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.secure_channel(target, client) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                pb_grpc.ExplainerServiceStub(channel).Explain(request, timeout=30)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            reply = pb_grpc.ExplainerServiceStub(channel).Explain(request, metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=120)
            assert reply.category_id == "weapons"

        # The scorer calls it with its client certificate and token.
        scorer_env = {
            "MODERATION_EXPLAINER_TLS_CA": str(tmp_path / "ca.pem"),
            "MODERATION_EXPLAINER_TLS_CLIENT_CERT": str(tmp_path / "client-a.pem"),
            "MODERATION_EXPLAINER_TLS_CLIENT_KEY": str(tmp_path / "client-a.key"),
            "MODERATION_EXPLAINER_TOKEN_FILE": str(tmp_path / "scorer-token"),
        }
        args = (*TINY, "--explainer", "remote", "--explainer-target", target)
        with running_server(tmp_path, *args, env=scorer_env) as server, server.channel() as channel:
            response = pb_grpc.ModerationServiceStub(channel).Moderate(
                pb.ModerateRequest(image=images.astronaut_jpeg(), force_escalation=True), timeout=120
            )
        assert response.escalation.status == pb.ESCALATION_STATUS_COMPLETED, response.escalation.reason
        assert "plaintext" not in server.log_text()
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert TOKEN not in log_path.read_text()


def test_the_cli_speaks_mutual_tls_and_tokens(tmp_path: Path) -> None:
    """Issue 18: `moderate` and `policy validate --served` spoke plaintext only."""
    from typer.testing import CliRunner

    from moderation.cli import app

    make_pki(tmp_path)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"upstream-a:{TOKEN}\n")
    (tmp_path / "token").write_text(f"# the CLI's token\n{TOKEN}\n")
    image = tmp_path / "photo.jpg"
    image.write_bytes(images.astronaut_jpeg())
    env = {
        "MODERATION_TLS_CERT": str(tmp_path / "server.pem"),
        "MODERATION_TLS_KEY": str(tmp_path / "server.key"),
        "MODERATION_TLS_CLIENT_CA": str(tmp_path / "ca.pem"),
        "MODERATION_AUTH_TOKENS_FILE": str(tokens),
    }
    ca = (tmp_path / "ca.pem").read_bytes()
    credentials = grpc.ssl_channel_credentials(ca, (tmp_path / "client-a.key").read_bytes(), (tmp_path / "client-a.pem").read_bytes())
    tls = ["--tls-ca", str(tmp_path / "ca.pem"), "--tls-client-cert", str(tmp_path / "client-a.pem"), "--tls-client-key", str(tmp_path / "client-a.key")]
    with running_server(tmp_path, *TINY, env=env, credentials=credentials) as server:
        runner = CliRunner()
        answered = runner.invoke(app, ["moderate", str(image), "--target", server.target, *tls, "--token-file", str(tmp_path / "token"), "--json"])
        assert answered.exit_code == 0, answered.output
        assert '"action"' in answered.stdout

        no_token = runner.invoke(app, ["moderate", str(image), "--target", server.target, *tls])
        assert no_token.exit_code == 1 and "UNAUTHENTICATED" in no_token.output

        env_only = runner.invoke(
            app, ["moderate", str(image), "--target", server.target],
            env={"MODERATION_CLIENT_TLS_CA": str(tmp_path / "ca.pem"), "MODERATION_CLIENT_TLS_CERT": str(tmp_path / "client-a.pem"),
                 "MODERATION_CLIENT_TLS_KEY": str(tmp_path / "client-a.key"), "MODERATION_CLIENT_TOKEN_FILE": str(tmp_path / "token")},
        )  # fmt: skip
        assert env_only.exit_code == 0, env_only.output

        half = runner.invoke(app, ["moderate", str(image), "--target", server.target, "--tls-ca", str(tmp_path / "ca.pem"), "--tls-client-cert", str(tmp_path / "client-a.pem")])
        assert half.exit_code == 2 and "mutual TLS needs both --tls-client-cert and --tls-client-key" in half.output

        validated = runner.invoke(app, ["policy", "validate", str(POLICIES), "--served", server.target, *tls, "--token-file", str(tmp_path / "token")])
        assert validated.exit_code == 0, validated.output


def test_explain_serve_without_tls_or_tokens_binds_loopback_and_says_so(tmp_path: Path) -> None:
    """Issue 18: explain-serve served plaintext, unauthenticated, on every interface, without a warning."""
    import socket
    import sys
    import time

    from tests.integration.server import free_port

    def start(*extra: str) -> tuple[subprocess.Popen, int, Path]:
        port, log_path = free_port(), tmp_path / f"explain-{len(extra)}.log"
        with log_path.open("w") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "moderation", "explain-serve", "--host", "0.0.0.0", "--port", str(port), "--metrics-port", "0",
                 "--policies", str(POLICIES), "--explainer-weights", "random", *extra],
                stdout=log_file, stderr=subprocess.STDOUT,
            )  # fmt: skip
        return process, port, log_path

    def listening_on(port: int) -> str:
        """'loopback' or 'any', from the kernel's socket tables (grpc binds IPv4 as ::ffff:a.b.c.d in tcp6)."""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for table in ("/proc/net/tcp", "/proc/net/tcp6"):
                for line in Path(table).read_text().splitlines()[1:]:
                    address, _, hex_port = line.split()[1].rpartition(":")
                    if int(hex_port, 16) == port and line.split()[3] == "0A":  # 0A: LISTEN
                        return "loopback" if address.endswith("0100007F") else "any" if set(address) == {"0"} else address
            time.sleep(0.2)
        raise AssertionError(f"nothing listens on {port}")

    process, port, log_path = start()
    try:
        assert listening_on(port) == "loopback", "bound beyond loopback"
        other_address = socket.gethostbyname(socket.gethostname())
        if other_address != "127.0.0.1":  # a machine with another address: nothing answers there
            with pytest.raises(OSError):
                socket.create_connection((other_address, port), timeout=2).close()
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert "explain-serve has neither TLS nor tokens, so it binds 127.0.0.1 instead of 0.0.0.0" in log_path.read_text()

    process, port, log_path = start("--insecure")
    try:
        assert listening_on(port) == "any"
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert "WITHOUT AUTHENTICATION on 0.0.0.0" in log_path.read_text()


def test_the_review_console_works_behind_mutual_tls_through_a_private_socket(tmp_path: Path) -> None:
    """With TLS and client certificates on the gRPC port, the console still reaches ReviewService (prod's case).

    It calls through a Unix socket in a directory only the server's user can enter; the
    reviewer's token decides, as on the port, and the socket goes with the server.
    """
    import re
    import stat
    import urllib.error
    import urllib.request

    from tests.integration.server import free_port

    make_pki(tmp_path)
    (tmp_path / "reviewers").write_text("alice:alice-reviewer-token-0123456789\n")
    console_port = free_port()
    env = {
        "MODERATION_TLS_CERT": str(tmp_path / "server.pem"),
        "MODERATION_TLS_KEY": str(tmp_path / "server.key"),
        "MODERATION_TLS_CLIENT_CA": str(tmp_path / "ca.pem"),
        "MODERATION_REVIEWER_TOKENS_FILE": str(tmp_path / "reviewers"),
        "MODERATION_EMBEDDING_STORE": str(tmp_path / "store.db"),
        "MODERATION_CONSOLE_PORT": str(console_port),
        "MODERATION_CONSOLE_HOST": "127.0.0.1",
    }
    ca = (tmp_path / "ca.pem").read_bytes()
    credentials = grpc.ssl_channel_credentials(ca, (tmp_path / "client-a.key").read_bytes(), (tmp_path / "client-a.pem").read_bytes())

    def list_cases(token: str) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{console_port}/api/ListCases", data=b"{}", method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    with running_server(tmp_path, *TINY, env=env, credentials=credentials) as server:
        status, body = list_cases("alice-reviewer-token-0123456789")
        assert status == 200 and body.get("cases", []) == [], body
        status, body = list_cases("forged-reviewer-token-98765432")
        assert status == 401 and body["code"] == "UNAUTHENTICATED"
        (socket_path,) = re.findall(r"ReviewService over unix:(\S+?)\)", server.log_text())
        folder = Path(socket_path).parent
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_ISSOCK(Path(socket_path).stat().st_mode)
        # The TCP port still refuses plaintext.
        with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as caught:
            pb_grpc.ModerationServiceStub(channel).Moderate(pb.ModerateRequest(image=images.astronaut_jpeg()), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not folder.exists(), "the socket's folder goes with the server"
