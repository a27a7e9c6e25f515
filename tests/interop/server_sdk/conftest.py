"""Fixtures for the Bandwidth Python server SDK interop test.

One patchbay server per test session, on a fresh SQLite database in a temp
directory. One account is created with the CLI *before* the server starts and
a second one *while* it is serving (both paths must work).

The binary comes from $PATCHBAY_BIN (default: target/debug/patchbay relative
to the repository root). Nothing here skips: a missing binary or a server that
does not come up is an error, so that a broken setup can never look green.
"""

import json
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bandwidth.configuration import Environment
from bandwidth.webrtc.web_rtc_client import WebRtcClient

REPO_ROOT = Path(__file__).resolve().parents[3]
LISTEN_RE = re.compile(r"patchbay listening on (http://127\.0\.0\.1:(\d+))\s*$")
STARTUP_TIMEOUT_S = 60.0

# Account ids: 1-12 chars of [A-Za-z0-9_-] (the brief said 14; the server caps at 12,
# see src/domain/ids.rs AccountId::MAX_LEN). The main one is 12 chars long on
# purpose: the longest account id gives the longest token (limit 186 chars).
MAIN_ACCOUNT_ID = "pb_sdk-main1"
LIVE_ACCOUNT_ID = "pb-live_1"


def pytest_configure(config):
    # jsonpickle (used by the SDK's APIHelper) warns on every call; it is noise here.
    config.addinivalue_line("filterwarnings", "ignore:keys will default to True:DeprecationWarning")


@dataclass
class Account:
    account_id: str
    username: str
    password: str


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT (no trailing slash)
    main: Account  # created before `serve`
    live: Account  # created while serving
    log_path: Path


def patchbay_bin() -> Path:
    raw = os.environ.get("PATCHBAY_BIN", "target/debug/patchbay")
    p = Path(raw)
    if not p.is_absolute():
        p = REPO_ROOT / p
    return p


def _create_account(binary: Path, account_id: str, db_url: str) -> Account:
    cmd = [str(binary), "account", "create", account_id, "--json", "--database-url", db_url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (
        f"`{' '.join(cmd)}` exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    lines = [l for l in proc.stdout.splitlines() if l.strip()]
    assert len(lines) == 1, f"`account create --json` must print exactly one JSON line, got: {proc.stdout!r}"
    data = json.loads(lines[0])
    assert isinstance(data, dict), data
    assert set(data) >= {"accountId", "username", "password"}, data
    assert data["accountId"] == account_id, data
    for k in ("username", "password"):
        assert isinstance(data[k], str) and data[k], f"{k} must be a non-empty string: {data}"
    return Account(data["accountId"], data["username"], data["password"])


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    binary = patchbay_bin()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(f"patchbay binary not found or not executable: {binary} (set PATCHBAY_BIN)", pytrace=False)

    workdir = tmp_path_factory.mktemp("patchbay")
    db_url = f"sqlite://{workdir / 'patchbay.db'}?mode=rwc"
    log_path = workdir / "server.stderr.log"

    main = _create_account(binary, MAIN_ACCOUNT_ID, db_url)

    log_file = open(log_path, "wb")
    proc = subprocess.Popen(
        [str(binary), "serve", "--listen", "127.0.0.1:0", "--database-url", db_url],
        stdout=subprocess.PIPE,
        stderr=log_file,
        stdin=subprocess.DEVNULL,
        cwd=str(workdir),
    )

    found = {}
    ready = threading.Event()
    stdout_lines = []

    def pump():
        # Keep draining stdout for the whole session so the pipe never fills.
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            stdout_lines.append(line)
            m = LISTEN_RE.search(line)
            if m and not ready.is_set():
                found["url"] = m.group(1)
                ready.set()
        ready.set()  # EOF: unblock the waiter

    t = threading.Thread(target=pump, name="patchbay-stdout", daemon=True)
    t.start()

    def stop():
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log_file.close()

    def log_tail(n=4000):
        try:
            return log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not ready.wait(timeout=0.2):
        if time.monotonic() > deadline:
            break
    if "url" not in found:
        stop()
        pytest.fail(
            "patchbay serve did not print 'patchbay listening on http://127.0.0.1:PORT' "
            f"within {STARTUP_TIMEOUT_S}s (exit code {proc.poll()})\n"
            f"stdout:\n" + "\n".join(stdout_lines) + f"\nstderr tail:\n{log_tail()}",
            pytrace=False,
        )

    try:
        live = _create_account(binary, LIVE_ACCOUNT_ID, db_url)
    except BaseException:
        stop()
        raise

    srv = Server(url=found["url"].rstrip("/"), main=main, live=live, log_path=log_path)
    try:
        yield srv
    finally:
        alive = proc.poll() is None
        stop()
        if not alive:
            # The server died during the session: make that visible.
            print(f"\npatchbay exited early with {proc.returncode}; stderr tail:\n{log_tail()}")


# Both base URLs must work with Environment.CUSTOM: with and without /v1.
@pytest.fixture(scope="session", params=["/v1", ""], ids=["base-v1", "base-root"])
def base_url(request, server):
    return server.url + request.param


def make_controller(base_url: str, username: str, password: str):
    """The SDK's APIController, built exactly as a customer would."""
    client = WebRtcClient(
        environment=Environment.CUSTOM,
        base_url=base_url,
        web_rtc_basic_auth_user_name=username,
        web_rtc_basic_auth_password=password,
    )
    return client.client


@pytest.fixture
def account(server):
    return server.main


@pytest.fixture
def api(base_url, server):
    """SDK controller for the main account (created before `serve`)."""
    return make_controller(base_url, server.main.username, server.main.password)


@pytest.fixture
def api_live(base_url, server):
    """SDK controller for the account created while the server was running."""
    return make_controller(base_url, server.live.username, server.live.password)


@pytest.fixture
def controller_factory(base_url):
    def factory(username, password):
        return make_controller(base_url, username, password)

    return factory
