"""Real text that needs no download: two domains cut from the running Python's standard library.

`python-code.txt` holds module sources with their docstrings removed (comments kept: code as a
language model sees it); `python-docstrings.txt` holds the removed docstrings (English prose).
The two domains are disjoint and deterministic for a given Python installation.
"""

from __future__ import annotations

import ast
import sysconfig
import tokenize
import warnings
from pathlib import Path

SKIPPED_DIRS = frozenset({
    "test", "tests", "idle_test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip",
    "site-packages", "dist-packages", "lib-dynload", "__pycache__", "pydoc_data", "encodings",
})
CODE_FILE, DOCSTRINGS_FILE = "python-code.txt", "python-docstrings.txt"
_DOC_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def stdlib_modules(root: Path | None = None) -> list[Path]:
    """The standard library's .py files in sorted order, without tests, GUI, vendored or generated code."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    found = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if any(p in SKIPPED_DIRS or p.startswith("config-") for p in parts[:-1]):
            continue
        if parts[-1].startswith("test_"):
            continue
        found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _docstring_nodes(tree: ast.Module) -> list[tuple[ast.AST, ast.Expr]]:
    """(owner, docstring expression) for every module/class/function docstring, in source order."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, _DOC_OWNERS) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                found.append((node, first))
    return sorted(found, key=lambda pair: (pair[1].lineno, pair[1].col_offset))


def split_module(source: str) -> tuple[str, list[str]]:
    """Split one module's source into (code without docstrings, cleaned docstrings in source order).

    A docstring is removed only when it has its lines to itself; a body left empty gets `pass`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = ast.parse(source)
    lines = source.split("\n")
    docstrings, removals = [], []
    for owner, expr in _docstring_nodes(tree):
        text = ast.get_docstring(owner, clean=True)
        if text and text.strip():
            docstrings.append(text.strip())
        first, last = lines[expr.lineno - 1], lines[expr.end_lineno - 1]
        indent = first[:len(first) - len(first.lstrip())]
        own_lines = len(indent.encode()) == expr.col_offset and \
            not last.encode()[expr.end_col_offset:].decode(errors="replace").strip(" \t;")
        if own_lines:
            keep_pass = len(owner.body) == 1 and not isinstance(owner, ast.Module)
            removals.append((expr.lineno - 1, expr.end_lineno, indent + "pass" if keep_pass else None))
    for start, stop, replacement in sorted(removals, reverse=True):
        lines[start:stop] = [] if replacement is None else [replacement]
    code = "\n".join(line.rstrip() for line in lines).strip("\n")
    return code, docstrings


def _read_source(path: Path) -> str | None:
    try:
        with tokenize.open(path) as f:
            return f.read()
    except (SyntaxError, UnicodeDecodeError, OSError):
        return None


def _write_limited(path: Path, parts: list[str], separator: str, max_bytes: int | None) -> None:
    """Join `parts` with `separator` into `path`, stopping at max_bytes (cut at a line end)."""
    out, size = [], 0
    for part in parts:
        piece = (separator if out else "") + part
        out.append(piece)
        size += len(piece.encode())
        if max_bytes is not None and size >= max_bytes:
            break
    data = "".join(out).encode() + b"\n"
    if max_bytes is not None and len(data) > max_bytes:
        cut = data.rfind(b"\n", 0, max_bytes)
        data = data[:cut + 1] if cut >= 0 else data[:max_bytes - 1].decode(errors="ignore").encode() + b"\n"
    path.write_bytes(data)


def stdlib_text(out_dir: str | Path, max_bytes: int | None = None, root: Path | None = None) -> list[Path]:
    """Write `python-code.txt` and `python-docstrings.txt` from the standard library into out_dir.

    `max_bytes` caps each file (cut at a line end), `root` overrides the standard library path."""
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
        raise ValueError(f"max_bytes must be a positive integer or None, got {max_bytes!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    modules = stdlib_modules(root)
    if not modules:
        raise ValueError(f"no Python modules found under {root or sysconfig.get_paths()['stdlib']}")

    codes, docs, sizes = [], [], [0, 0]
    for path in modules:
        if max_bytes is not None and min(sizes) >= max_bytes:
            break
        source = _read_source(path)
        try:
            code, docstrings = split_module(source) if source is not None else ("", [])
        except (SyntaxError, ValueError):
            continue
        if code.strip():
            codes.append(code)
            sizes[0] += len(code.encode())
        docs.extend(docstrings)
        sizes[1] += sum(len(d.encode()) for d in docstrings)

    code_path, doc_path = out_dir / CODE_FILE, out_dir / DOCSTRINGS_FILE
    _write_limited(code_path, codes, "\n\n\n", max_bytes)
    _write_limited(doc_path, docs, "\n\n", max_bytes)
    return [code_path, doc_path]
