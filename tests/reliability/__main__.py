"""``python -m tests.reliability``: run the whole reliability suite and print its report.

The same as ``make reliability`` (``pytest tests/reliability``), which writes
``.meterstream/reliability/reliability-report.json`` and ``reliability-report.txt``
through the suite's conftest; extra arguments go to pytest (``-k sigkill``, ``-x``...).
The long run is separate: ``python -m bench.soak`` (``make soak``).
"""

from __future__ import annotations

import sys

import pytest

from tests.reliability.report import REPO


def main(argv: list[str]) -> int:
    return int(pytest.main([str(REPO / "tests" / "reliability"), "-q", *argv]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
