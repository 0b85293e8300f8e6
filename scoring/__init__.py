"""Carewatch scoring stage."""
