#!/usr/bin/env python3
"""Scores one answer of the coding eval: `check.py ID < answer.txt` takes the first ```python
block of the answer (or the whole text when it has none), runs it, then the problem's tests, in a
fresh interpreter with a time limit. Exit 0 when every test passes."""

import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from problems import P  # noqa: E402


def code_of(answer: str) -> str:
    m = re.search(r"```(?:python|py)?\s*\n(.*?)```", answer, re.S)
    return m.group(1) if m else answer


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: check.py ID < answer", file=sys.stderr)
        return 2
    tests = {pid: t for pid, _, t in P}.get(sys.argv[1])
    if tests is None:
        print(f"unknown problem {sys.argv[1]}", file=sys.stderr)
        return 2
    program = code_of(sys.stdin.read()) + "\n\n" + tests + "\n"
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(program)
    try:
        r = subprocess.run([sys.executable, f.name], capture_output=True, timeout=10)
        return 0 if r.returncode == 0 else 1
    except subprocess.TimeoutExpired:
        return 1
    finally:
        os.unlink(f.name)


if __name__ == "__main__":
    sys.exit(main())
