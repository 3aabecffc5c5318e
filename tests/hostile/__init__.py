"""Hostile peers against the real daemon (issue 14): see harness.py."""
