"""Regenerate poetry.lock where Poetry's default source cannot resolve, without committing an index URL.

Poetry's default source needs a per-version metadata endpoint that some networks lack, while pip's simple index
works. This script: adds a temporary primary source pointing at the simple index pip uses (read from pip's
configuration at run time, never written to a committed file), runs ``poetry lock``, removes the source again,
strips the ``[package.source]`` blocks it left in the lock and recomputes the lock's content hash with Poetry's
own code, so that ``poetry check --lock`` passes for users on a normal network.

Usage: ``python scripts/update_lock.py [--poetry PATH]`` from the repository root (Poetry ≥ 2 installed).
"""

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMP_SOURCE = "coco-seg-temporary-lock-source"
DEFAULT_SIMPLE_INDEX = "https://pypi.org/simple"


def pip_simple_index() -> str:
    """The index URL pip is configured with (pip's own default when none is set)."""
    for key in ("global.index-url", "install.index-url"):
        result = subprocess.run([sys.executable, "-m", "pip", "config", "get", key], capture_output=True, text=True)
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip()
    return DEFAULT_SIMPLE_INDEX


def strip_sources(lock_text: str) -> str:
    """Remove every ``[package.source]`` table (type/url/reference lines) from a lock file."""
    return re.sub(r"\n\[package\.source\]\n(?:[a-z_-]+ = .*\n)+", "\n", lock_text)


def rewrite_content_hash(poetry_python: str) -> None:
    code = (
        "from pathlib import Path; import re\n"
        "from poetry.factory import Factory\n"
        f"root = Path({str(ROOT)!r})\n"
        "digest = Factory().create_poetry(root).locker._get_content_hash()\n"
        "lock = root / 'poetry.lock'\n"
        "text = re.sub(r'content-hash = \"[0-9a-f]+\"', f'content-hash = \"{digest}\"', lock.read_text())\n"
        "lock.write_text(text)\n"
    )
    subprocess.run([poetry_python, "-c", code], check=True, cwd=ROOT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poetry", default=shutil.which("poetry"), help="the poetry executable")
    args = parser.parse_args()
    if not args.poetry:
        parser.error("poetry not found; pass --poetry PATH")
    poetry = [args.poetry, "--no-interaction"]
    # The Python that runs Poetry itself, to reuse its Locker for the content hash.
    poetry_python = str(Path(args.poetry).resolve().parent / "python")
    subprocess.run(poetry + ["source", "add", "--priority=primary", TEMP_SOURCE, pip_simple_index()], check=True,
                   cwd=ROOT)
    try:
        subprocess.run(poetry + ["lock"], check=True, cwd=ROOT)
    finally:
        subprocess.run(poetry + ["source", "remove", TEMP_SOURCE], check=True, cwd=ROOT)
        pyproject = ROOT / "pyproject.toml"  # `source remove` leaves an empty `source = []` behind
        pyproject.write_text(re.sub(r"\nsource = \[\]\n", "\n", pyproject.read_text()))
    lock = ROOT / "poetry.lock"
    lock.write_text(strip_sources(lock.read_text()))
    rewrite_content_hash(poetry_python)
    subprocess.run(poetry + ["check", "--lock"], check=True, cwd=ROOT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
