"""``python -m carewatch`` is the ``carewatch`` command."""

from carewatch.cli import app

app()
