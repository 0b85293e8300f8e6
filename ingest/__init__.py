"""Carewatch ingest stage."""
