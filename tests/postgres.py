"""A real PostgreSQL for tests and the store bench: initdb + pg_ctl in a temporary directory.

Debian's `postgresql` package (deploy/install-tools.sh installs it) puts the server
binaries under /usr/lib/postgresql/<major>/bin. PostgreSQL refuses to run as root, and
the tests run as root in CI containers: then every server command runs as the
unprivileged `nobody` via `runuser`, in a directory handed to it. The server listens on
127.0.0.1 only, on a free port, with its socket in the same temporary directory, and
password (scram) authentication, so the URLs the tests use carry a password like a
production one does.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

INSTALL_HINT = "install it with `bash deploy/install-tools.sh` (apt-get install -y postgresql)"
UNPRIVILEGED_USER = "nobody"
USER, PASSWORD = "moderation", "test-password-not-secret"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine; the message names the install step."""


def postgres_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/<major>/bin with initdb and pg_ctl, or the directory of pg_ctl on PATH."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(re.sub(r"\D", "", p.parent.parent.name) or 0))
    if candidates:
        return candidates[-1].parent
    on_path = shutil.which("pg_ctl")
    if on_path and (Path(on_path).parent / "initdb").exists():
        return Path(on_path).parent
    raise PostgresUnavailable(f"PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin or on PATH; {INSTALL_HINT}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One throwaway cluster. `start()`, `stop()` and `start()` again keep the data and the port (an outage, not a new database)."""

    def __init__(self, *, durable: bool = False):
        self.bin_dir = postgres_bin_dir()
        self.port = _free_port()
        self.durable = durable  # fsync on: the bench measures what production pays; tests skip it for speed
        self.directory = Path(tempfile.mkdtemp(prefix="moderation-pg-"))
        self.data = self.directory / "data"
        self.log_path = self.directory / "postgres.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            # PostgreSQL will not run as root: hand the directory to an unprivileged user.
            if shutil.which("runuser") is None:
                raise PostgresUnavailable("running as root and `runuser` (util-linux) is missing: cannot start PostgreSQL as a non-root user")
            shutil.chown(self.directory, UNPRIVILEGED_USER)
            self._as_user = ["runuser", "-u", UNPRIVILEGED_USER, "--"]
        os.chmod(self.directory, 0o700)
        password_file = self.directory / "password"
        password_file.write_text(PASSWORD + "\n")
        if self._as_user:
            shutil.chown(password_file, UNPRIVILEGED_USER)
        self._run(
            "initdb", "-D", str(self.data), "-U", USER, f"--pwfile={password_file}", "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip
        password_file.unlink()

    def _run(self, program: str, *args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([*self._as_user, str(self.bin_dir / program), *args], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}\n{log}")
        return result

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.directory} -c max_connections=50"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """fast: roll back open transactions and close connections, as a restart or failover does."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def is_running(self) -> bool:
        return subprocess.run([*self._as_user, str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "status"], capture_output=True).returncode == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        import psycopg

        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database names here are simple identifiers, got {name!r}")
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def remove(self) -> None:
        if self.is_running():
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def running_postgres(*, durable: bool = False) -> Iterator[PostgresServer]:
    server = PostgresServer(durable=durable)
    try:
        server.start()
        yield server
    finally:
        server.remove()


def postgres_for_test(*, durable: bool = False) -> Iterator[PostgresServer]:
    """A running PostgreSQL for a pytest fixture: `yield from postgres_for_test()`.

    Missing binaries fail the run under CI=true (the store must be tested against a real
    PostgreSQL there) and skip elsewhere.
    """
    import os

    import pytest

    try:
        context = running_postgres(durable=durable)
        server = context.__enter__()
    except PostgresUnavailable as error:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {error}", pytrace=False)
        pytest.skip(str(error))
    try:
        yield server
    finally:
        context.__exit__(None, None, None)
