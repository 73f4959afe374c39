"""A real `clarion serve` process for end-to-end tests, driven over HTTP like a deployment.

These fixtures are independent of the in-process `database` fixture: the server is the
installed console script on its embedded SQLite default, exactly what a developer runs first.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, NamedTuple

import httpx
import pytest

CLARION = Path(sys.executable).parent / "clarion"
START_TIMEOUT_SECONDS = 30.0  # a cold start imports a lot; CI machines can be slow
STOP_TIMEOUT_SECONDS = 10.0


class ClarionServer(NamedTuple):
    base_url: str  # scheme://host:port, without /v1 (the SDK's `base_url`)
    account_sid: str
    auth_token: str


class _Output:
    """Collects a process's output on a thread, so reading it never blocks the test."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            with self._lock:
                self._lines.append(line)

    def text(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def join(self) -> None:
        self._thread.join(timeout=STOP_TIMEOUT_SECONDS)


@pytest.fixture(scope="session")
def clarion_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of every `clarion` process in the session: one fresh data directory.

    Inherited `CLARION_*` settings are dropped so the server always runs on its SQLite default.
    """
    env = {name: value for name, value in os.environ.items() if not name.startswith("CLARION_")}
    env["CLARION_DATA_DIR"] = str(tmp_path_factory.mktemp("clarion-data"))
    return env


ClarionCli = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="session")
def clarion_cli(clarion_env: dict[str, str]) -> ClarionCli:
    """Runs `clarion <args>` as its own process on the same data directory as the server."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CLARION), *args],
            env=clarion_env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    return run


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _announced(output: str, label: str) -> str | None:
    match = re.search(rf"^\s*{label}:\s*(\S+)\s*$", output, re.MULTILINE)
    return None if match is None else match.group(1)


@pytest.fixture(scope="session")
def clarion_server(clarion_env: dict[str, str]) -> Iterator[ClarionServer]:
    """`clarion serve` on a free port; its announced default account's SID and token."""
    with running_server(clarion_env) as server:
        yield server


@pytest.fixture(scope="session")
def sandbox_server(
    clarion_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClarionServer]:
    """`clarion serve --sandbox` on its own data directory."""
    env = {**clarion_env, "CLARION_DATA_DIR": str(tmp_path_factory.mktemp("sandbox-data"))}
    with running_server(env, "--sandbox") as server:
        yield server


@contextlib.contextmanager
def running_server(env: dict[str, str], *options: str) -> Iterator[ClarionServer]:
    """`clarion serve [options]` on a free port until the block ends; fails the test if the
    server dies on the way."""
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [str(CLARION), "serve", "--host", "127.0.0.1", "--port", str(port), *options],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    output = _Output(process.stdout)
    try:
        account_sid, auth_token = _wait_until_serving(process, output, base_url)
        yield ClarionServer(base_url, account_sid, auth_token)
        died = process.poll()
        if died is not None:
            pytest.fail(
                f"clarion serve exited with status {died} during the tests; output:\n"
                + output.text()
            )
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        output.join()
        process.stdout.close()


def _wait_until_serving(
    process: subprocess.Popen[str], output: _Output, base_url: str
) -> tuple[str, str]:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output.join()
            pytest.fail(
                f"clarion serve exited with status {process.returncode} on start-up; output:\n"
                + output.text()
            )
        text = output.text()
        sid, token = _announced(text, "Account SID"), _announced(text, "Auth token")
        if sid is not None and token is not None:
            try:
                # Unauthenticated on purpose: any HTTP answer means the server is up.
                httpx.get(f"{base_url}/v1/Services", timeout=1.0)
            except httpx.TransportError:
                pass
            else:
                return sid, token
        time.sleep(0.05)
    pytest.fail(
        f"clarion serve did not answer on {base_url} within {START_TIMEOUT_SECONDS:.0f} s; "
        "output:\n" + output.text()
    )
