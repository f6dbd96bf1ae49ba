"""The local Prefect server that `minirlhf flow` (and `make demo`) run against when PREFECT_API_URL is not set.

Usage:
    from flows.server import use_local_server
    api_url = use_local_server()   # http://127.0.0.1:4200/api; started in the background if nothing answers there
    prefect server stop            # stops it (Prefect's own command)

Without a server address Prefect starts a temporary server for each flow run and stops it at the end: 8-20 s
of every run here, most of a fully cached `make demo`, and the UI is gone when the run ends. Instead the
first `minirlhf flow` starts Prefect's own `prefect server start --background` on 127.0.0.1:4200 (its database
in $PREFECT_HOME, ~/.prefect by default) and leaves it running: later runs use it at once, and the Prefect
UI shows every run at http://127.0.0.1:4200. A Prefect server already answering there is used as it is.
Set PREFECT_API_URL to use another server; `--ephemeral` keeps Prefect's temporary server instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

LOCAL_HOST = "127.0.0.1"
PORT_ENV = "MINIRLHF_PREFECT_PORT"  # another port for the local server, when 4200 is taken by something else
DEFAULT_PORT = 4200
START_TIMEOUT_S = 180  # a fresh database on a busy 2-core machine takes tens of seconds


def local_api_url() -> str:
    return f"http://{LOCAL_HOST}:{int(os.environ.get(PORT_ENV, DEFAULT_PORT))}/api"


def is_healthy(api_url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout_s) as response:
            return response.status == 200
    except OSError:
        return False


def use_local_server() -> str:
    """Point this process at the local Prefect server, starting it in the background if needed; its API URL.
    Call before Prefect is imported: Prefect reads PREFECT_API_URL when it loads its settings."""
    api_url = local_api_url()
    if not is_healthy(api_url):
        port = api_url.rsplit(":", 1)[1].split("/")[0]
        started = subprocess.run(
            [sys.executable, "-m", "prefect", "server", "start", "--background", "--host", LOCAL_HOST, "--port", port,
             "--analytics-off"], capture_output=True, text=True, timeout=START_TIMEOUT_S)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not is_healthy(api_url):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local Prefect server did not answer at {api_url} within {START_TIMEOUT_S} s "
                                   f"(`prefect server start --background` said: "
                                   f"{(started.stdout + started.stderr).strip()[-500:]}); "
                                   f"free port {port} or set {PORT_ENV}, or set PREFECT_API_URL to a running server")
            time.sleep(0.5)
    os.environ["PREFECT_API_URL"] = api_url
    return api_url
