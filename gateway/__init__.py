"""Carewatch gateway stage."""
