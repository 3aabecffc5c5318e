"""How deep the generated-input tests go: an everyday depth for scripts/test and CI, a deep one for
scripts/fuzz (``HYPOTHESIS_PROFILE=deep``).

The everyday counts are not guesses: each was measured (gcov on the C extension a test compares with its
Python reference) to take every branch that two deep runs take, with explicit ``@example`` inputs for the
branches random inputs reach only now and then, so that every run takes them. What the deep run adds is
more random inputs on the same branches: the search for a bug no one wrote an example for, which belongs
in a run of its own, not in every CI run's 20 minutes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from hypothesis import settings

#: Set by scripts/fuzz; anything else (unset) is the everyday depth.
DEEP = os.environ.get("HYPOTHESIS_PROFILE") == "deep"

F = TypeVar("F", bound=Callable[..., Any])


def examples(*, ci: int, deep: int, **kwargs: Any) -> Callable[[F], F]:
    """Hypothesis settings of ``ci`` examples, or ``deep`` under HYPOTHESIS_PROFILE=deep; marks the test
    ``deep`` so that scripts/fuzz picks it. ``kwargs`` are the other settings (deadline, ...)."""

    def apply(test: F) -> F:
        marked: F = pytest.mark.deep(settings(max_examples=deep if DEEP else ci, **kwargs)(test))
        return marked

    return apply


def seconds(*, ci: int, deep: int) -> int:
    """How long a fuzzer runs (after its seed corpus, which it always runs whole): ``ci``, or ``deep``
    under HYPOTHESIS_PROFILE=deep. The test that uses it is marked ``deep`` by hand."""
    return deep if DEEP else ci
