"""The dashboard in a real browser: `minirlhf dashboard` on loopback, opened in headless Chromium over the DevTools
protocol; a chart and the policy comparison table must render. Screenshots are kept in artifacts/test-screenshots/.

Chromium is Debian's `chromium` package, installed by `make browser` (which `make test` runs first); the tests only
look for it on PATH. Where it is missing they skip with that reason, and in CI (env CI set) they fail instead.
"""

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from websockets.sync.client import connect

from minirlhf.store import Store
from tests.conftest import skip_or_fail_in_ci
from tests.test_dashboard import dashboard_store

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "artifacts" / "test-screenshots"
RENDER_TIMEOUT_S = 90  # the machine is shared: a first page load can take a while


@pytest.fixture(scope="module")
def chromium() -> str:
    """The chromium binary on PATH; installing it is a setup step (`make browser`), never done by a test."""
    found = shutil.which("chromium")
    if found is None:
        skip_or_fail_in_ci("Chromium not installed: run `make browser`")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, what: str, proc: subprocess.Popen, timeout_s: float = RENDER_TIMEOUT_S) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError as err:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode} before {url} answered") from err
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not answer {url} within {timeout_s} s: {err}") from err
            time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    """Stop a process started with start_new_session=True and everything it started (its process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def dashboard_url(tmp_path_factory):
    db = dashboard_store(tmp_path_factory)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "minirlhf.cli", "dashboard", "--db", str(db), "--port", str(port),
                               "--address", "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    try:
        assert wait_for(f"http://127.0.0.1:{port}/_stcore/health", "minirlhf dashboard", server) == "ok"
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server)


class Browser:
    """Headless Chromium driven over the DevTools protocol (a websocket of JSON commands): no driver to install."""

    def __init__(self, binary: str, profile: Path):
        self.proc = subprocess.Popen([binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                      "--hide-scrollbars", "--window-size=1400,1400", "--remote-debugging-port=0",
                                      f"--user-data-dir={profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = profile / "DevToolsActivePort"  # Chromium writes the port it picked here
        deadline = time.monotonic() + RENDER_TIMEOUT_S
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (exit code {self.proc.poll()})")
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        pages = json.loads(wait_for(f"http://127.0.0.1:{port}/json/list", "chromium", self.proc))
        self.ws = connect([p for p in pages if p["type"] == "page"][0]["webSocketDebuggerUrl"], max_size=None)
        self.next_id = 0

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=RENDER_TIMEOUT_S))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_until(self, expression: str, what: str):
        deadline = time.monotonic() + RENDER_TIMEOUT_S
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                text = self.evaluate("document.body.innerText")
                raise TimeoutError(f"{what} did not render within {RENDER_TIMEOUT_S} s; page text: {text[:1000]!r}")
            time.sleep(0.5)
        return value

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))
        print(f"screenshot: {path}")
        return path

    def close(self) -> None:
        self.ws.close()
        stop(self.proc)


@pytest.fixture
def browser(chromium, tmp_path):
    browser = Browser(chromium, tmp_path / "profile")
    yield browser
    browser.close()


# A drawn chart: Vega-Lite's SVG (or canvas) inside Streamlit's chart element, with marks in it.
CHARTS_DRAWN = ("document.querySelectorAll('[data-testid=stVegaLiteChart] svg.marks path, "
                "[data-testid=stVegaLiteChart] canvas').length")
TABLE_ROWS = ("Array.from(document.querySelectorAll('[data-testid=stTable] tr'))"
              ".map(row => Array.from(row.cells).map(cell => cell.innerText.trim()))")


def test_comparison_page_renders_its_chart_and_table_in_chromium(browser, dashboard_url):
    browser.send("Page.navigate", url=f"{dashboard_url}/?page=comparison")
    rows = browser.wait_until(f"(rows => rows.length >= 3 && rows)({TABLE_ROWS})", "the comparison table")
    browser.wait_until(CHARTS_DRAWN, "the reward chart")
    time.sleep(1)  # let the chart finish its paint before the picture
    shot = browser.screenshot(SCREENSHOTS / "dashboard-comparison.png")
    header, *policies = rows
    assert header[0] == "policy" and "gold_reward" in header and "win_rate_gold" in header
    assert [row[0] for row in policies] == ["sft", "ppo"]
    kl = header.index("kl")
    assert float(policies[0][kl]) == 0 and float(policies[1][kl]) >= -1e9  # numbers, drawn in the cells
    assert browser.evaluate("document.querySelectorAll('[data-testid=stException]').length") == 0
    assert shot.stat().st_size > 20_000  # a drawn page, not a blank or skeleton one


def test_curves_page_renders_three_charts_with_the_resume_point_in_chromium(browser, dashboard_url,
                                                                               tmp_path_factory):
    store = Store(dashboard_store(tmp_path_factory))
    retried = store.query("select run_id from v_stage_runs where stage = 'ppo' and attempt = 2").iloc[0, 0]
    browser.send("Page.navigate", url=f"{dashboard_url}/?page=curves&run={retried}")
    browser.wait_until("document.querySelectorAll('[data-testid=stVegaLiteChart] svg.marks').length >= 3",
                       "the proxy, gold and KL charts")
    browser.wait_until("document.querySelectorAll('[data-testid=stVegaLiteChart] g.mark-rule line').length >= 3",
                       "the resume rules")
    time.sleep(1)
    browser.screenshot(SCREENSHOTS / "dashboard-curves.png")
    assert browser.evaluate("document.querySelectorAll('[data-testid=stException]').length") == 0
