"""``carewatch dashboard``: run the Streamlit app in a child process with this process's settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from carewatch.settings import Settings

APP = Path(__file__).with_name("app.py")


def serve_dashboard(settings: Settings) -> int:
    """Serve ``app.py`` on ``settings.dashboard_port``; the app finds the API at ``settings.api_base_url``."""
    command = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(settings.dashboard_port),
               "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    env = settings.child_env(api_url=settings.api_base_url)
    return subprocess.call(command, env=env)
