"""Properties and fuzzing of the whole event path (issue 14): see harness.py."""
