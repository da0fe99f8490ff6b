"""Checks the family pages in docs/ against the installed fastnorm package.

    python docs/check_docs.py [page.md ...]      # default: every docs/*.md

Three checks, each tied to a fence convention of these pages:

- ```python blocks are runnable examples. The blocks of one page run in order, in one fresh interpreter (a
  later block may use names an earlier one defined), with a 600 s limit per page.
- ```py blocks list signatures, one call per statement, e.g. ``fastnorm.layer_norm(input, normalized_shape,
  weight=None, ...) -> Tensor``. Each one is compared with ``inspect.signature`` of the object it names
  (parameter names, kinds and default values; annotations are not compared; a class is compared through its
  ``__init__``). Parameters whose names start with ``_`` are private and may be left out of the docs.
- Lines starting with ``fastnorm::`` inside ```text blocks are op schemas; each must equal a schema registered
  in ``torch.ops.fastnorm`` (``str(schema)`` as torch prints it). With every page checked, each registered
  schema must appear on some page.

It also checks that every ``<!-- bench:<name> begin -->`` marker has its ``end``, and that every relative link
``[..](page.md#anchor)`` / ``[..](#anchor)`` points to an existing docs page and heading (GitHub's heading slugs;
a link to a page that is not in docs/ is reported). Exit status 1 on any failure.
"""
import ast
import importlib
import inspect
import pathlib
import re
import subprocess
import sys

DOCS = pathlib.Path(__file__).resolve().parent
FENCE = re.compile(r"^```([\w+-]*)\s*$")
MARKER = re.compile(r"<!-- bench:([a-z0-9_-]+) (begin|end) -->")
LINK = re.compile(r"\]\(([A-Za-z0-9_.-]*\.md)?(?:#([^)\s]+))?\)")


def slugs(text):
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens, -1, -2 for repeats."""
    out, seen, infence = set(), {}, False
    for line in text.splitlines():
        if line.startswith("```"):
            infence = not infence
        if infence or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        slug = "".join(ch for ch in title if ch.isalnum() or ch in " -_").replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def check_links(page, text):
    errors = []
    for target, anchor in LINK.findall(text):
        if not target and not anchor:
            continue
        path = DOCS / target if target else page
        if not path.exists():
            errors.append(f"{page.name}: link to {target} (not in docs/)")
            continue
        if anchor and anchor not in slugs(path.read_text()):
            errors.append(f"{page.name}: link to {target}#{anchor}: no such heading")
    return errors


def blocks(text):
    """(language, first line number, body) of every fenced block."""
    out, lang, start, body = [], None, 0, []
    for i, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line.strip()) if line.startswith("```") else None
        if lang is None and m:
            lang, start, body = m.group(1) or "", i + 1, []
        elif lang is not None and line.startswith("```") and line.strip() == "```":
            out.append((lang, start, "\n".join(body)))
            lang = None
        elif lang is not None:
            body.append(line)
    return out


def statements(body):
    """Joins the lines of a signature block into statements (balanced parentheses), skipping comments."""
    stmts, cur, depth = [], [], 0
    for line in body.splitlines():
        s = line.split("  #")[0].rstrip() if not line.lstrip().startswith("#") else ""
        if not s.strip() and depth == 0:
            continue
        cur.append(s.strip())
        depth += s.count("(") - s.count(")") + s.count("[") - s.count("]")
        if depth <= 0:
            stmts.append(" ".join(cur))
            cur, depth = [], 0
    return stmts


def resolve(path):
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for p in parts[i:]:
            obj = getattr(obj, p)
        return obj
    raise ImportError(path)


def doc_params(params):
    fn = ast.parse(f"def _f({params}): pass").body[0]
    a = fn.args
    out = []
    pos = a.posonlyargs + a.args
    defaults = [None] * (len(pos) - len(a.defaults)) + list(a.defaults)
    for arg, d in zip(pos, defaults):
        out.append((arg.arg, "POSITIONAL_OR_KEYWORD", d))
    if a.vararg:
        out.append((a.vararg.arg, "VAR_POSITIONAL", None))
    for arg, d in zip(a.kwonlyargs, a.kw_defaults):
        out.append((arg.arg, "KEYWORD_ONLY", d))
    if a.kwarg:
        out.append((a.kwarg.arg, "VAR_KEYWORD", None))
    return out


def check_signature(stmt, ns):
    m = re.match(r"^([A-Za-z_][\w.]*)\((.*)\)\s*(->.*)?$", stmt, re.S)
    if not m:
        return f"not a signature: {stmt[:80]}"
    path, params = m.group(1), m.group(2)
    try:
        obj = resolve(path)
    except (ImportError, AttributeError) as e:
        return f"{path}: cannot resolve ({e})"
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError) as e:
        return f"{path}: no signature ({e})"
    real = [p for p in sig.parameters.values() if not p.name.startswith("_")]
    # A class is documented through __init__, a method through the class: drop the bound argument.
    if real and real[0].name in ("self", "cls"):
        real = real[1:]
    try:
        doc = doc_params(params)
    except SyntaxError as e:
        return f"{path}: cannot parse the documented parameters ({e})"
    if [(n, k) for n, k, _ in doc] != [(p.name, p.kind.name) for p in real]:
        return (f"{path}: parameters differ\n    docs: {[(n, k) for n, k, _ in doc]}\n"
                f"    code: {[(p.name, p.kind.name) for p in real]}")
    for (n, _, d), p in zip(doc, real):
        has_default = p.default is not inspect.Parameter.empty
        if (d is None) == has_default and p.kind.name not in ("VAR_POSITIONAL", "VAR_KEYWORD"):
            return f"{path}: parameter {n!r}: default documented {d is not None}, in the code {has_default}"
        if d is not None:
            value = eval(compile(ast.Expression(d), "<doc>", "eval"), ns)
            if not (value == p.default or (value is p.default)):
                return f"{path}: parameter {n!r}: default {ast.unparse(d)} in the docs, {p.default!r} in the code"
    return None


def run_examples(page, code):
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          cwd=DOCS.parent)
    if proc.returncode != 0:
        return f"{page}: examples failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return None


def main(argv):
    import torch
    import fastnorm  # noqa: F401  (registers the ops, including the Python custom ops)
    import fastnorm.sara  # noqa: F401
    ns = {"torch": torch, "float": float, "inf": float("inf")}
    pages = [pathlib.Path(a) for a in argv] or sorted(DOCS.glob("*.md"))
    registered = {str(s) for s in torch._C._jit_get_all_schemas() if str(s).startswith("fastnorm::")}
    seen, failures, counts = set(), [], {"signatures": 0, "schemas": 0, "example blocks": 0}
    for page in pages:
        text = page.read_text()
        opened = []
        for name, kind in MARKER.findall(text):
            if kind == "begin":
                opened.append(name)
            elif not opened or opened.pop() != name:
                failures.append(f"{page.name}: bench marker '{name}' end without begin")
        failures += [f"{page.name}: bench marker '{n}' not closed" for n in opened]
        failures += check_links(page, text)
        code = []
        for lang, line, body in blocks(text):
            if lang == "python":
                code.append(f"# {page.name}:{line}\n{body}\n")
                counts["example blocks"] += 1
            elif lang == "py":
                for stmt in statements(body):
                    counts["signatures"] += 1
                    err = check_signature(stmt, ns)
                    if err:
                        failures.append(f"{page.name}:{line}: {err}")
            elif lang == "text":
                for s in body.splitlines():
                    if s.startswith("fastnorm::"):
                        counts["schemas"] += 1
                        seen.add(s.strip())
                        if s.strip() not in registered:
                            failures.append(f"{page.name}:{line}: schema not registered: {s.strip()}")
        if code:
            err = run_examples(page.name, "\n".join(code))
            if err:
                failures.append(err)
            print(f"{page.name}: {len(code)} example blocks ran" if not err else f"{page.name}: examples FAILED")
    if not argv:
        failures += [f"schema on no page: {s}" for s in sorted(registered - seen)]
    print(", ".join(f"{v} {k}" for k, v in counts.items()) + " checked")
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
