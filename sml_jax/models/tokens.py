"""Gemma 3 special token ids and per-token roles: the vocabulary facts every layer shares.

All Gemma 3 sizes share one SentencePiece vocabulary (262,144 pieces); these ids are fixed by it
(`tests/test_chat_format.py` checks them against the real tokenizer):

    PAD_ID             0    <pad>            right padding of train batches
    EOS_ID             1    <eos>            end of sequence (a sampler stop token)
    BOS_ID             2    <bos>            first token of every context
    START_OF_TURN_ID 105    <start_of_turn>  opens a chat turn
    END_OF_TURN_ID   106    <end_of_turn>    closes a chat turn (the main sampler stop token)

`Role` labels each token of a context by who wrote it; the loss is taken on `Role.MODEL` tokens
only (`loss_mask`). The chat template that assigns roles lives in `dialogue/chat_format.py`,
which re-exports these names.

Pure python + numpy: no jax, gemma or tensorflow import (the sampler, train step and chat format
all read it).
"""

from __future__ import annotations

import enum

import numpy as np

PAD_ID = 0
EOS_ID = 1
BOS_ID = 2
START_OF_TURN_ID = 105
END_OF_TURN_ID = 106

# The pieces behind the ids (for the tokenizer check and for display).
SPECIAL_PIECES = {PAD_ID: "<pad>", EOS_ID: "<eos>", BOS_ID: "<bos>",
                  START_OF_TURN_ID: "<start_of_turn>", END_OF_TURN_ID: "<end_of_turn>"}

# A turn ends when the model writes <end_of_turn> (or <eos>): the sampler's default stop tokens.
STOP_TOKENS = (END_OF_TURN_ID, EOS_ID)


class Role(enum.IntEnum):
  """Who a token belongs to (int8 arrays beside the ids)."""
  PAD = 0
  TEMPLATE = 1     # chat template: <bos>, <start_of_turn>, role names, newlines between turns
  USER = 2         # the other party's text and its closing <end_of_turn>
  MODEL = 3        # the model's text and its closing <end_of_turn>: the trained tokens
  DEMO = 4         # model-side text of in-context demonstrations: part of the prompt, never trained


def loss_mask(roles: np.ndarray) -> np.ndarray:
  """float32 [T]: 1.0 where the token was written by the model (Role.MODEL), else 0."""
  return (np.asarray(roles) == Role.MODEL).astype(np.float32)
