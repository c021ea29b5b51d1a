"""List functions longer than a limit (default 50 lines, decorators and docstring included).

    python scripts/long_functions.py [LIMIT] [PATH ...]      (default: flowprep/)

Issue 21's count of "functions a person can hold"; prints ``lines  file:line  name``, longest first,
then the total.
"""

import ast
import sys
from pathlib import Path


def long_functions(paths: list[Path], limit: int) -> list[tuple[int, str, str]]:
    found = []
    for root in paths:
        for p in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                    n = node.end_lineno - first + 1
                    if n > limit:
                        found.append((n, f"{p}:{node.lineno}", node.name))
    return sorted(found, reverse=True)


def main(argv: list[str]) -> int:
    limit = int(argv[0]) if argv and argv[0].isdigit() else 50
    paths = [Path(a) for a in argv if not a.isdigit()] or [Path("flowprep")]
    found = long_functions(paths, limit)
    for n, where, name in found:
        print(f"{n:4d}  {where}  {name}")
    print(f"{len(found)} functions over {limit} lines")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
