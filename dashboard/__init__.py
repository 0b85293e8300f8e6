"""Carewatch dashboard stage."""
