"""Carewatch api stage."""
