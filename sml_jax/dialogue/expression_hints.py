"""How to work out a generated one-operation problem (`Problem.meta["expression"]`, e.g.
"67 * 30") by parts, for the hint teacher: tens and ones of a sum, counting on or down, the sign
of a difference below zero, a two-digit factor split into tens + ones; and, once the student has
written a part, the next one.

Pure functions (the standard library only); randomness from the `rng` argument. The caller
leak-checks every text (a part may equal the answer).
"""

from __future__ import annotations

import ast
from typing import Collection

from sml_jax.tasks.base import Problem


def _int_operands(expression: str):
  """(a, op, b) of a one-operation integer expression ("54 + 26"), else None."""
  try:
    node = ast.parse(expression, mode="eval").body
  except SyntaxError:
    return None
  ops = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
  if (isinstance(node, ast.BinOp) and type(node.op) in ops
      and all(isinstance(x, ast.Constant) and isinstance(x.value, int) for x in (node.left, node.right))):
    return node.left.value, ops[type(node.op)], node.right.value
  return None


def expression_hint(problem: Problem, rng, reached: Collection = ()) -> str | None:
  """How to work out a one-operation generated problem (`meta["expression"]`) by parts: tens and
  ones of a sum, counting on or down, repeated addition. `reached`: the numbers the student has
  written (its own turns, not the teacher's): once it has a part, the hint moves on to the next
  one ("Now multiply 201 by 10.") instead of repeating the first. None when there is no such
  expression; the caller leak-checks (a part may equal the answer)."""
  parsed = _int_operands(problem.meta.get("expression") or "")
  if parsed is None:
    return None
  a, op, b = parsed
  after = _next_part(a, op, b, set(reached), rng)
  if after is not None:
    return after
  if op in "+-" and 0 in (b, a if op == "+" else b):
    return f"{'Adding' if op == '+' else 'Taking away'} 0 does not change a number."
  if op == "+" and a >= 10 and b >= 10:
    (ta, oa), (tb, ob) = divmod(a, 10), divmod(b, 10)
    return rng.choice((
        f"Add the tens and the ones separately: {ta * 10} + {tb * 10} = {(ta + tb) * 10}, "
        f"and {oa} + {ob} = {oa + ob}.",
        f"Split the numbers: first {ta * 10} + {tb * 10} = {(ta + tb) * 10}, then add {oa} + {ob}."))
  if op == "+":
    return rng.choice((f"Start at {max(a, b)} and count on {min(a, b)} more, one at a time.",
                       f"Count up from {max(a, b)} by {min(a, b)}, one step at a time."))
  if op == "-" and b > a:
    # The base 270M writes the size without the sign ("21 - 68 = 47"); taking away the tens of
    # 68 from 21 (the split below) goes below zero at once and does not help.
    return rng.choice((
        f"{b} is bigger than {a}, so the answer is below zero: work out {b} - {a}, then put a "
        f"minus sign in front.",
        f"Taking away more than you have goes below zero: {a} - {b} is minus ({b} - {a})."))
  if op == "-" and b >= 10 and b % 10 == 0:
    # The split below would name the answer (a - tens) and be dropped by the leak check.
    tb, oa = b // 10, a % 10
    return (f"Take away {tb} ten{'s' if tb > 1 else ''}: the tens of {a} go down by {tb} and the "
            f"ones stay {oa}.")
  if op == "-" and b >= 10:
    tb, ob = divmod(b, 10)
    return f"Take away the tens first: {a} - {tb * 10} = {a - tb * 10}, then take away {ob} more."
  if op == "-":
    return rng.choice((f"Start at {a} and count down {b}, one at a time.",
                       f"Count back {b} step{'s' if b != 1 else ''} from {a}."))
  if op == "*" and max(a, b) >= 10 and min(a, b) >= 2:
    big, small, tens, ones = _factor_split(a, b)
    if ones == 0:
      return f"Work out {tens} * {small} = {tens * small} first, then multiply by 10."
    return rng.choice((
        f"Split {big} into {tens * 10} + {ones}: {small} * {tens * 10} = {tens * 10 * small}, "
        f"then add {small} * {ones}.",
        f"Multiply in two parts: {small} * {tens * 10} = {small * tens * 10}, and "
        f"{small} * {ones} = {small * ones}."))
  if op == "*":
    return rng.choice((f"{a} * {b} means adding {a} to itself {b} times.",
                       f"Think of {b} groups of {a}."))
  return f"Ask how many times {b} fits into {a}."


def _factor_split(a: int, b: int) -> tuple[int, int, int, int]:
  """(big, small, tens, ones) of a product: the two-digit factor split into tens + ones."""
  big, small = (b, a) if b >= 10 else (a, b)
  return (big, small, *divmod(big, 10))


def _next_part(a: int, op: str, b: int, reached: set, rng) -> str | None:
  """The hint after the first part of `expression_hint`'s split, when the student reached it."""
  if op == "+" and a >= 10 and b >= 10:
    (ta, oa), (tb, ob) = divmod(a, 10), divmod(b, 10)
    tens, ones = (ta + tb) * 10, oa + ob
    if tens in reached and ones in reached:
      return rng.choice((f"You have {tens} and {ones}: now work out {tens} + {ones}.",
                         f"Now put the parts together: {tens} + {ones}."))
    if tens in reached:
      return f"The tens make {tens}. Now add the ones, {oa} + {ob}, and put the parts together."
  if op == "-" and b > a and b - a in reached:
    return rng.choice((f"{b} - {a} = {b - a} is the size. {b} is bigger than {a}, so the answer "
                       f"is below zero: put a minus sign in front.",
                       f"You have {b - a}; now the sign: taking away more than {a} goes below "
                       f"zero."))
  if op == "-" and a >= b >= 10 and b % 10:
    tb, ob = divmod(b, 10)
    if a - tb * 10 in reached:
      return f"{a} - {tb * 10} = {a - tb * 10}. Now take away the {ob} that is left."
  if op == "*" and max(a, b) >= 10 and min(a, b) >= 2:
    _, small, tens, ones = _factor_split(a, b)
    if ones == 0 and tens * small in reached:
      return rng.choice((f"Now multiply {tens * small} by 10.",
                         f"{tens} * {small} = {tens * small} is right; now multiply "
                         f"{tens * small} by 10."))
    first, second = small * tens * 10, small * ones
    if ones and first in reached and second in reached:
      return f"Now add the two parts: {first} + {second}."
    if ones and first in reached:
      return f"{small} * {tens * 10} = {first}. Now work out {small} * {ones} and add it on."
  return None
