"""Find the program in a free-text turn: ```python fences first, else the largest code-like block.

    >>> extract_program("Try this:\\n```python\\ndef f(x):\\n    return x\\n```\\nDone.", "f")
    'def f(x):\\n    return x'
    >>> extract_program("Sure.\\ndef f(x):\\n    return x + 1\\nThis adds one.", "f")
    'def f(x):\\n    return x + 1'

Several fenced blocks: the last one defining the entry point (a later block is a revision), else
the largest. A fence left open at the end of the turn (the sampler hit its limit) still counts.
"""

from __future__ import annotations

import ast
import re
import textwrap

_PYTHON_LANGS = frozenset({"", "python", "py", "python3", "py3"})
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.S | re.M)
# Lines that open a code block in unfenced text, and top-level lines that continue one.
_OPENS = re.compile(r"^(?:async\s+def|def|class)\s+\w|^(?:import\s+\w|from\s+[\w.]+\s+import\s)|^@\w")
_CONTINUES = re.compile(
    r"^(?:[A-Za-z_][\w.]*(?:\[[^\]]*\])?\s*(?:[-+*/%|&^]?=(?!=)|\()"
    r"|(?:if|elif|else|for|while|try|except|finally|with|return|assert|raise|print)\b)")


def fenced_blocks(text: str) -> list[str]:
  """Contents of the python (or untagged) ``` fences, dedented; empty ones dropped."""
  blocks = []
  for m in _FENCE.finditer(text):
    if m.group(1).lower() in _PYTHON_LANGS:
      code = textwrap.dedent(m.group(2)).strip("\n").rstrip()
      if code.strip():
        blocks.append(code)
  return blocks


def _parses(code: str) -> bool:
  try:
    ast.parse(code)
    return True
  except (SyntaxError, ValueError):  # ValueError: null bytes
    return False


def code_like_blocks(text: str) -> list[str]:
  """Runs of unfenced lines that look like python: opened by def / class / import / a decorator,
  continued by indented, blank or statement-like lines; trailing lines that break the parse are
  cut off."""
  lines, blocks, i = text.split("\n"), [], 0
  while i < len(lines):
    if not _OPENS.match(lines[i]):
      i += 1
      continue
    j = i + 1
    while j < len(lines) and (not lines[j].strip() or lines[j][:1] in " \t"
                              or _OPENS.match(lines[j]) or _CONTINUES.match(lines[j])):
      j += 1
    block = lines[i:j]
    while block and not _parses("\n".join(block)):
      block.pop()
    code = "\n".join(block).strip("\n").rstrip()
    if code:
      blocks.append(code)
    i = j
  return blocks


def defines(code: str, name: str | None) -> bool:
  """True if `code` defines function `name` at any level (any function when name is None)."""
  pattern = r"\w+" if name is None else re.escape(name)
  return re.search(rf"^\s*(?:async\s+)?def\s+{pattern}\s*\(|^{pattern}\s*=\s*lambda\b", code,
                   re.M) is not None


def _pick(blocks: list[str], entry_point: str | None) -> str | None:
  if not blocks:
    return None
  defining = [b for b in blocks if defines(b, entry_point)]
  if defining:
    return defining[-1]
  return max(blocks, key=lambda b: sum(1 for line in b.split("\n") if line.strip()))


def extract_program(text: str, entry_point: str | None = None) -> str | None:
  """The program in a turn, or None if it has no code."""
  if not isinstance(text, str):
    raise TypeError(f"text must be str, got {type(text).__name__}")
  return _pick(fenced_blocks(text), entry_point) or _pick(code_like_blocks(text), entry_point)


def is_function_body(code: str, entry_point: str | None) -> bool:
  """True if `code` reads as the body of a function whose header was given (HumanEval style
  completions): no `def entry_point`, and no top-level def / class of its own."""
  if defines(code, entry_point):
    return False
  dedented = textwrap.dedent(code)
  return re.search(r"^(?:async\s+def|def|class)\s", dedented, re.M) is None


CODE_REMOVED = "[code removed]"
_ANY_FENCE = re.compile(r"^[ \t]*```[^\n]*\n.*?(?:^[ \t]*```[^\n]*$|\Z)|```.*?(?:```|\Z)", re.S | re.M)


def remove_programs(text: str) -> str:
  """`text` with every program `extract_program` could find replaced by "[code removed]": all
  ``` fences (any language, closed or left open) and unfenced code-like blocks. Afterwards
  `extract_program(result)` is None."""
  text = _ANY_FENCE.sub(CODE_REMOVED, text)
  for _ in range(100):  # each pass removes at least one block
    blocks = code_like_blocks(text)
    if not blocks:
      break
    for block in blocks:
      at = text.find(block)
      if at >= 0:
        text = text[:at] + CODE_REMOVED + text[at + len(block):]
  return text
