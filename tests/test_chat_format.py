import numpy as np

from sml_jax.dialogue import chat_format as cf
from sml_jax.dialogue.chat_format import Role


def test_two_turn_dialogue_tokens_and_roles(tokenizer):
  ids, roles = cf.encode_dialogue(tokenizer, [("user", "Hi"), ("model", "Yo")])
  hi, yo, nl = tokenizer.encode("Hi"), tokenizer.encode("Yo"), tokenizer.encode("\n")
  user, model = tokenizer.encode("user\n"), tokenizer.encode("model\n")
  T, U, M = Role.TEMPLATE, Role.USER, Role.MODEL
  want_ids = [2, 105, *user, *hi, 106, *nl, 105, *model, *yo, 106, *nl]
  want_roles = ([T, T] + [T] * len(user) + [U] * len(hi) + [U, T] + [T] + [T] * len(model)
                + [M] * len(yo) + [M, T])
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_array_equal(roles, want_roles)
  # Decodes back to the Gemma template text.
  assert tokenizer.decode(ids.tolist()[1:]) == cf.format_dialogue([("user", "Hi"), ("model", "Yo")])
  # The loss mask covers the model's text and its closing <end_of_turn> only.
  mask = cf.loss_mask(roles)
  assert mask.sum() == len(yo) + 1
  assert [int(i) for i in ids[mask > 0]] == [*yo, 106]


def test_generation_prompt(tokenizer):
  ids, roles = cf.encode_dialogue(tokenizer, [("user", "Q?")], add_generation_prompt=True)
  assert tokenizer.decode(ids.tolist()[-3:]).endswith("<start_of_turn>model\n")
  assert roles[-1] == Role.TEMPLATE


def test_special_ids_match_the_tokenizer(tokenizer):
  """`models/tokens.py` hard-codes the Gemma 3 special ids; they are the real tokenizer's."""
  from sml_jax.models import tokens
  special = tokenizer.special_tokens
  assert (tokens.PAD_ID, tokens.EOS_ID, tokens.BOS_ID) == (special.PAD, special.EOS, special.BOS)
  assert (tokens.START_OF_TURN_ID, tokens.END_OF_TURN_ID) == (special.START_OF_TURN,
                                                              special.END_OF_TURN)
  for token_id, piece in tokens.SPECIAL_PIECES.items():
    assert tokenizer._sp.id_to_piece(token_id) == piece   # pylint: disable=protected-access
  assert tokens.STOP_TOKENS == (tokens.END_OF_TURN_ID, tokens.EOS_ID)
  # chat_format re-exports the same objects.
  assert cf.Role is tokens.Role and cf.loss_mask is tokens.loss_mask
  assert (cf.BOS_ID, cf.END_OF_TURN_ID) == (tokens.BOS_ID, tokens.END_OF_TURN_ID)
