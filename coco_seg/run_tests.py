"""`poetry run test`: the whole test suite, exiting non-zero when anything fails (or when no test ran)."""

import os
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"


def main() -> None:
    # code-loader sends telemetry on import unless told not to; without network that stalls every import.
    os.environ.setdefault("TL_DISABLE_ANALYTICS", "true")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import pytest

    sys.exit(int(pytest.main([str(TESTS), *sys.argv[1:]])))


if __name__ == "__main__":
    main()
