"""List the longest functions in a package, to track how readable it stays.

Run: python benchmarks/function_lengths.py [package_dir] [--top N]
"""

import argparse
import ast
import pathlib


def function_lengths(package: pathlib.Path) -> list[tuple[int, str]]:
  """(line count, 'file:qualified.name') for every function under package."""
  found = []
  for path in sorted(package.rglob('*.py')):
    tree = ast.parse(path.read_text(), filename=str(path))

    def visit(node: ast.AST, prefix: str) -> None:
      for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
          name = f'{prefix}{child.name}'
          # Decorators are not part of the body a reader has to hold.
          lines = child.end_lineno - child.lineno + 1
          found.append((lines, f'{path.as_posix()}:{name}'))
          visit(child, f'{name}.')
        elif isinstance(child, ast.ClassDef):
          visit(child, f'{prefix}{child.name}.')

    visit(tree, '')
  return sorted(found, reverse=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('package', nargs='?', default='jaxres')
  parser.add_argument('--top', type=int, default=5)
  args = parser.parse_args()
  for lines, name in function_lengths(pathlib.Path(args.package))[:args.top]:
    print(f'{lines:5d}  {name}')


if __name__ == '__main__':
  main()
