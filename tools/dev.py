#!/usr/bin/env python3
"""One-command entry points for a fresh machine that has only Python 3.10+.

    python3 tools/dev.py demo    # set up .venv, run the demo pipeline, ingest it into SQLite
    python3 tools/dev.py test    # set up .venv with the dev extra, run the whole test suite

Both create ``.venv`` beside the project on first use and (re)install the
project into it when ``pyproject.toml`` changed. Extra arguments after
``test`` go to pytest; after ``demo`` to the demo.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"


def ensure_venv(extra: str) -> None:
    if not PY.exists():
        print(f"creating {VENV.relative_to(ROOT)} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / f".installed-{extra}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    print(f"installing formula-foundry[{extra}] into .venv ...", flush=True)
    subprocess.run([str(PY), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(PY), "-m", "pip", "install", "-q", "-e", f"{ROOT}[{extra}]"], check=True)
    stamp.write_text(digest)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test"):
        print(__doc__.strip())
        return 2
    command, rest = argv[0], argv[1:]
    if command == "test":
        ensure_venv("dev")
        return subprocess.call([str(PY), "-m", "pytest", *rest], cwd=ROOT)
    ensure_venv("demo")
    env = dict(os.environ)
    return subprocess.call([str(PY), str(ROOT / "tools" / "demo.py"), *rest], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
