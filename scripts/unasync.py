"""Generate kelp's sync API from its asyncio source, or check that the generated files are current.

kelp has one source for both faces: ``src/kelp/aio/`` is the truth, and this script rewrites each of its
modules into the sync twin beside ``src/kelp/`` (``aio/connection.py`` -> ``connection.py``,
``aio/transport/memory.py`` -> ``transport/memory.py``). The conformance tests are written once the same
way (``tests/conformance/aio`` -> ``tests/conformance/sync``).

The rewrite is token-level and deliberately dumb: ``async def`` -> ``def``, ``await x`` -> ``x``, async
dunders and types -> their sync names, ``kelp.aio`` -> ``kelp``. Where the two faces must differ, the source
says so on the line itself:

* a line ending in ``# async-only`` is dropped from the sync twin;
* a comment line ``# sync-only: <code>`` becomes ``<code>`` in the sync twin.

Only the primitives module (``kelp.aio._backend`` / ``kelp._backend``) and the AMQP I/O driver
(``kelp.aio._amqp_io`` / ``kelp._amqp_io``: an ``asyncio.Protocol`` vs a reader thread) are written by hand
for both.

Usage: ``python scripts/unasync.py`` writes the twins; ``--check`` fails (exit 1) when any is stale.
"""

from __future__ import annotations

import argparse
import difflib
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (source directory, target directory); every *.py below source except EXCLUDED is rewritten.
# The differential tests (Kombu vs kelp vs kelp.aio) are written once the same way.
TREES = [
    (ROOT / "tests/differential/aio", ROOT / "tests/differential/sync"),
    (ROOT / "src/kelp/aio", ROOT / "src/kelp"),
    (ROOT / "tests/conformance/aio", ROOT / "tests/conformance/sync"),
]
EXCLUDED = {"__init__.py", "_backend.py", "_amqp_io.py"}

# Whole-word replacements, applied in order.
WORDS = [
    ("kelp.aio.", "kelp."),
    ("kelp.aio", "kelp"),
    ("from kelp import aio", "import kelp"),
    ("__aenter__", "__enter__"),
    ("__aexit__", "__exit__"),
    ("__aiter__", "__iter__"),
    ("__anext__", "__next__"),
    ("StopAsyncIteration", "StopIteration"),
    ("AsyncIterator", "Iterator"),
    ("AsyncIterable", "Iterable"),
    ("AbstractAsyncContextManager", "AbstractContextManager"),
    ("asynccontextmanager", "contextmanager"),
]
PATTERNS = [
    (re.compile(r"\basync def\b"), "def"),
    (re.compile(r"\basync with\b"), "with"),
    (re.compile(r"\basync for\b"), "for"),
    (re.compile(r"\bawait\s+"), ""),
]
ASYNC_ONLY = re.compile(r"#\s*async-only\s*$")
SYNC_ONLY = re.compile(r"^(\s*)#\s*sync-only:\s?(.*)$")


def _word_pattern(word: str) -> re.Pattern[str]:
    return re.compile(r"(?<![\w.])" + re.escape(word) + (r"(?!\w)" if word[-1].isalnum() else ""))


COMPILED_WORDS = [(_word_pattern(old), new) for old, new in WORDS]


def rewrite_line(line: str) -> str | None:
    if ASYNC_ONLY.search(line):
        return None
    sync_only = SYNC_ONLY.match(line)
    if sync_only:
        return sync_only.group(1) + sync_only.group(2) + "\n"
    for pattern, new in PATTERNS:
        line = pattern.sub(new, line)
    for pattern, new in COMPILED_WORDS:
        line = pattern.sub(new, line)
    return line


def rewrite(source: str, origin: str) -> str:
    out = [f"# Generated from {origin} by scripts/unasync.py; do not edit.\n"]
    for line in source.splitlines(keepends=True):
        new = rewrite_line(line)
        if new is not None:
            out.append(new)
    return "".join(out)


def formatted(text: str, target: Path) -> str:
    """The text with imports sorted and formatted by ruff: renaming ``kelp.aio.x`` to ``kelp.x`` changes
    the import order, and dropping ``await`` can let a wrapped line fit again."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        raise SystemExit("unasync: ruff is needed to format the generated files (pip install ruff)")
    for command in (["check", "--select", "I", "--fix", "--exit-zero"], ["format"]):
        result = subprocess.run(
            [ruff, *command, "--quiet", "--stdin-filename", str(target), "-"],
            input=text,
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
        )
        if result.returncode != 0:
            raise SystemExit(f"unasync: ruff could not process {target}: {result.stderr.strip()}")
        text = result.stdout
    return text


def pairs() -> list[tuple[Path, Path]]:
    found = []
    for src_dir, dst_dir in TREES:
        if not src_dir.exists():
            continue
        for src in sorted(src_dir.rglob("*.py")):
            if src.name in EXCLUDED and src.parent == src_dir:
                continue
            if "__pycache__" in src.parts:
                continue
            found.append((src, dst_dir / src.relative_to(src_dir)))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail when a generated file is stale")
    args = parser.parse_args()
    stale = []
    for src, dst in pairs():
        expected = formatted(rewrite(src.read_text(), src.relative_to(ROOT).as_posix()), dst)
        current = dst.read_text() if dst.exists() else ""
        if current == expected:
            continue
        if args.check:
            stale.append(dst)
            diff = difflib.unified_diff(
                current.splitlines(keepends=True), expected.splitlines(keepends=True), str(dst), "expected"
            )
            sys.stderr.writelines(list(diff)[:40])
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(expected)
            print(f"wrote {dst.relative_to(ROOT)}")
    if stale:
        names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
        print(f"unasync: stale sync twins: {names}; run python scripts/unasync.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
