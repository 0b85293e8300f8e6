"""Carewatch firmware_sim stage."""
