"""Carewatch: remote monitoring for care homes and home care. Shared CLI, settings and wire contract."""

__version__ = "0.1.0"
