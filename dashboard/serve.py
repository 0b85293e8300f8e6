"""``carewatch dashboard``: run the Streamlit app in a child process with this process's settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from carewatch import palette
from carewatch.settings import Settings

APP = Path(__file__).with_name("app.py")


def dashboard_command(settings: Settings) -> list[str]:
    """The Streamlit command line (also used by the browser test and the benchmark, so they run what users run)."""
    return [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(settings.dashboard_port),
            "--server.headless", "true", "--server.fileWatcherType", "none",
            "--browser.gatherUsageStats", "false", "--theme.base", "light",
            "--client.toolbarMode", "viewer", "--theme.primaryColor", palette.PRIMARY]


def dashboard_env(settings: Settings) -> dict[str, str]:
    return settings.child_env(api_url=settings.api_base_url)


def serve_dashboard(settings: Settings) -> int:
    """Serve ``app.py`` on ``settings.dashboard_port``; the app finds the API at ``settings.api_base_url``."""
    return subprocess.call(dashboard_command(settings), env=dashboard_env(settings))
