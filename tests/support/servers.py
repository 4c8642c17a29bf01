"""Real servers for tests: a Tiled server run by `sweepcat serve`, and a throwaway PostgreSQL cluster."""

from __future__ import annotations

import collections
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx

API_KEY = "sweepcatTestKey42"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for child servers: TILED_* variables would override the config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILED_")}
    env.update(extra)
    return env


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(f"server exited with {proc.returncode}:\n{out}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"server at {url} not ready after {timeout} s")


@contextlib.contextmanager
def sweepcat_server(catalog: str, *, api_key: str = API_KEY, public: bool = False,
                    extra_env: dict[str, str] | None = None, extra_args: list[str] | None = None) -> Iterator[str]:
    """`sweepcat serve` on 127.0.0.1 and a free port; stopped on exit."""
    port = free_port()
    cmd = [sys.executable, "-m", "sweepcat.cli", "serve", "--catalog", catalog, "--port", str(port), "--create"]
    if public:
        cmd.append("--public")
    cmd.extend(extra_args or [])
    env = clean_env(SWEEPCAT_API_KEY=api_key, **(extra_env or {}))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        drain(proc)
        yield url
    finally:
        stop(proc)


@contextlib.contextmanager
def plain_tiled_server(catalog: Path, readable: list[Path], workdir: Path, *,
                       adapters: dict[str, str] | None = None) -> Iterator[str]:
    """`tiled serve config` on a catalog file: Tiled alone (no sweepcat routes, no fast path; sweepcat's
    adapter only if ``adapters`` maps it), one API key, on 127.0.0.1 and a free port; stopped on exit."""
    import yaml

    args: dict = {"uri": f"sqlite:///{catalog}", "readable_storage": [str(r) for r in readable]}
    if adapters:
        args["adapters_by_mimetype"] = adapters
    config = workdir / "plain-tiled.yml"
    config.write_text(yaml.safe_dump({"authentication": {"single_user_api_key": API_KEY},
                                      "trees": [{"path": "/", "tree": "catalog", "args": args}]}))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tiled", "serve", "config", str(config), "--port", str(port)],
                            env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url
    finally:
        stop(proc)


def drain(proc: subprocess.Popen, keep: int = 500) -> collections.deque:
    """Read a server's output as it comes (its last ``keep`` lines are returned, for debugging): a pipe
    nobody reads fills after 64 KB of access log, and the server then blocks on its next log line."""
    lines: collections.deque = collections.deque(maxlen=keep)

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)

    threading.Thread(target=pump, daemon=True, name=f"drain-{proc.pid}").start()
    return lines


def stop(proc: subprocess.Popen) -> None:
    """Terminate a server we started; kill it if it does not go within 15 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- PostgreSQL


def pg_bin(name: str) -> str:
    """initdb/pg_ctl/postgres: on PATH, or in Debian's versioned directory."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if candidates:
        return candidates[-1]
    raise RuntimeError(f"{name} not found: install PostgreSQL (make test runs scripts/ensure_postgres.sh)")


class PostgresCluster:
    """A PostgreSQL server in a temporary directory on 127.0.0.1, for one test session."""

    def __init__(self, durable: bool = False) -> None:
        self.durable = durable  # benchmarks: PostgreSQL's default fsync; tests: fsync off for speed
        self.dir = Path(tempfile.mkdtemp(prefix="sweepcat-pg-"))
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        self.user = "postgres" if self.as_root else os.environ.get("USER", "postgres")

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        full = ["runuser", "-u", "postgres", "--", *cmd] if self.as_root else list(cmd)
        return subprocess.run(full, check=True, capture_output=True, text=True)

    def start(self) -> "PostgresCluster":
        data = self.dir / "data"
        if self.as_root:
            shutil.chown(self.dir, "postgres")
        self._run(pg_bin("initdb"), "-D", str(data), "-U", self.user, "-A", "trust", "--no-sync", "-E", "UTF8")
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir}"
        if not self.durable:
            opts += " -c fsync=off -c full_page_writes=off"
        self._run(pg_bin("pg_ctl"), "-D", str(data), "-o", opts, "-l", str(self.dir / "log"), "-w", "start")
        return self

    def stop(self) -> None:
        try:
            self._run(pg_bin("pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import asyncio

        import asyncpg

        async def create() -> None:
            con = await asyncpg.connect(self.dsn())
            try:
                await con.execute(f'CREATE DATABASE "{name}"')
            finally:
                await con.close()

        asyncio.run(create())
        return self.dsn(name)
