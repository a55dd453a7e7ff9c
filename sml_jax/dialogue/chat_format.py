"""The Gemma chat template as token ids plus a per-token role array (the basis of loss masks).

    <bos><start_of_turn>user\\n{text}<end_of_turn>\\n<start_of_turn>model\\n{text}<end_of_turn>\\n

Per-token roles (`Role`): template tokens (`<bos>`, `<start_of_turn>`, role names, newlines
between turns) are TEMPLATE; a turn's text and its closing `<end_of_turn>` take the speaker's role,
USER or MODEL (the model must learn to stop, so its `<end_of_turn>` is in the loss). Example, for
[("user", "Hi"), ("model", "Yo")]:

    tokens: <bos> <sot> user \\n  Hi  <eot> \\n <sot> model \\n  Yo  <eot> \\n
    roles:    T    T    T    T   U    U    T   T    T    T   M    M    T

Segments are tokenised separately and concatenated, which is exactly how a multi-turn sampler
extends its context turn by turn (generated tokens are kept as sampled, never re-tokenised).
Pure numpy: no jax import. Token ids and `Role`: `sml_jax/models/tokens.py`.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

# The special ids, `Role` and `loss_mask` belong to the model layer (`models/tokens.py`, where
# the sampler and the train step read them); re-exported here for dialogue code.
from sml_jax.models.tokens import (  # pylint: disable=unused-import
    BOS_ID, END_OF_TURN_ID, EOS_ID, PAD_ID, START_OF_TURN_ID, Role, loss_mask)

CHAT_ROLES = ("user", "model")


def _encode(tokenizer, text: str) -> list[int]:
  return list(tokenizer.encode(text)) if text else []


def turn_header(tokenizer, role: str) -> list[int]:
  """`<start_of_turn>{role}\\n` as ids."""
  if role not in CHAT_ROLES:
    raise ValueError(f"Chat role must be one of {CHAT_ROLES}, got {role!r}.")
  return [START_OF_TURN_ID] + _encode(tokenizer, f"{role}\n")


def encode_turn(tokenizer, role: str, text: str | None = None, *, text_ids: Sequence[int] | None = None,
                close: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """One turn: header + text (+ `<end_of_turn>\\n` when `close`). Returns (ids [T], roles [T]).

  `text_ids` passes already-tokenised text (e.g. sampled tokens, which must stay as sampled);
  they must not include the closing `<end_of_turn>`.
  """
  header = turn_header(tokenizer, role)
  body = list(text_ids) if text_ids is not None else _encode(tokenizer, text or "")
  body_role = Role.MODEL if role == "model" else Role.USER
  ids = header + body
  roles = [Role.TEMPLATE] * len(header) + [body_role] * len(body)
  if close:
    ids += [END_OF_TURN_ID] + _encode(tokenizer, "\n")
    roles += [body_role, Role.TEMPLATE]
  return np.asarray(ids, np.int32), np.asarray(roles, np.int8)


def encode_dialogue(tokenizer, turns: Iterable[tuple[str, str]], *, add_bos: bool = True,
                    add_generation_prompt: bool = False, num_demo_turns: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
  """A list of (role, text) turns -> (ids [T] int32, roles [T] int8).

  `add_generation_prompt` appends `<start_of_turn>model\\n` so the model writes the next turn.
  The first `num_demo_turns` turns are in-context demonstrations: their model text is Role.DEMO.
  """
  ids, roles = ([BOS_ID], [Role.TEMPLATE]) if add_bos else ([], [])
  parts_ids, parts_roles = [np.asarray(ids, np.int32)], [np.asarray(roles, np.int8)]
  for k, (role, text) in enumerate(turns):
    t_ids, t_roles = encode_turn(tokenizer, role, text)
    if k < num_demo_turns:
      t_roles = np.where(t_roles == Role.MODEL, Role.DEMO, t_roles).astype(np.int8)
    parts_ids.append(t_ids)
    parts_roles.append(t_roles)
  if add_generation_prompt:
    header = turn_header(tokenizer, "model")
    parts_ids.append(np.asarray(header, np.int32))
    parts_roles.append(np.full(len(header), Role.TEMPLATE, np.int8))
  return np.concatenate(parts_ids), np.concatenate(parts_roles)


def strip_stop(ids: Sequence[int]) -> list[int]:
  """A sampled turn's ids without the stop token (<end_of_turn> or <eos>) it may end with."""
  ids = [int(i) for i in ids]
  return ids[:-1] if ids and ids[-1] in (END_OF_TURN_ID, EOS_ID) else ids


def decode_turn(tokenizer, ids: Sequence[int]) -> str:
  """A sampled turn's text (stop token dropped, surrounding whitespace stripped)."""
  return tokenizer.decode(strip_stop(ids)).strip()


def format_dialogue(turns: Iterable[tuple[str, str]], add_generation_prompt: bool = False) -> str:
  """The same template as text (for display and for samplers that take strings)."""
  out = "".join(f"<start_of_turn>{r}\n{t}<end_of_turn>\n" for r, t in turns)
  return out + ("<start_of_turn>model\n" if add_generation_prompt else "")

