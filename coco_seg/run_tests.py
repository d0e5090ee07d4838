"""`poetry run test`: the whole test suite, exiting non-zero when anything fails (or when no test ran)."""

import os
import sys
from pathlib import Path
from typing import Optional

TESTS = Path(__file__).resolve().parent.parent / "tests"


def main(argv: Optional[list[str]] = None, *, tests: Path = TESTS) -> None:
    """Run pytest on ``tests`` with extra pytest arguments ``argv`` (default: the command line) and exit with its
    status: 0 only when every test passed."""
    # code-loader sends telemetry on import unless told not to; without network that stalls every import.
    os.environ.setdefault("TL_DISABLE_ANALYTICS", "true")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import pytest

    sys.exit(int(pytest.main([str(tests), *(sys.argv[1:] if argv is None else argv)])))


if __name__ == "__main__":
    main()
