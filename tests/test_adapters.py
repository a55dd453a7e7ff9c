"""Exported LoRA adapters (sml_jax/models/adapters.py): format, round trip, checks, train state."""

import json
import os

import jax
import ml_dtypes
import numpy as np
import optax
import pytest

from sml_jax import models
from sml_jax.models import adapters
from sml_jax.training.train_state import create_train_state, init_lora_params


@pytest.fixture(scope="module")
def tiny_lora():
  model = models.build_model("tiny", lora_rank=4)
  base = models.load_params("tiny")
  lora = init_lora_params(model, base, seed=0)
  # Non-zero B factors, as after training (fresh ones are all zero).
  lora = jax.tree.map(lambda x: x + 0.01 * np.arange(x.size, dtype=np.float32).reshape(x.shape),
                      lora)
  return model, base, lora


def _meta(rank=4):
  return adapters.AdapterMeta(model="tiny", lora_rank=rank, base_checkpoint=None, base_seed=0)


def test_round_trip_is_the_bfloat16_rounding_of_the_factors(tmp_path, tiny_lora):
  _, _, lora = tiny_lora
  adapters.save_adapter(str(tmp_path), lora, _meta())
  assert sorted(os.listdir(tmp_path)) == ["adapter.json", "lora.npz"]
  meta, back = adapters.load_adapter(str(tmp_path))
  assert meta.model == "tiny" and meta.lora_rank == 4 and meta.base_checkpoint is None
  want = jax.tree.map(lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32), lora)
  assert jax.tree.structure(back) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  record = json.loads((tmp_path / "adapter.json").read_text())
  assert record["num_params"] == sum(x.size for x in jax.tree.leaves(lora))
  assert record["dtype"] == "bfloat16" and record["format"] == adapters.FORMAT


def test_the_train_state_starts_from_the_adapter(tmp_path, tiny_lora):
  model, base, lora = tiny_lora
  adapters.save_adapter(str(tmp_path), lora, _meta())
  _, back = adapters.load_adapter(str(tmp_path))
  state = create_train_state(model, base, optax.sgd(0.1), lora=back)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(back)):
    np.testing.assert_array_equal(np.asarray(a), b)
  # Factors of another rank. (Not a rank-2 model: gemma's LoRA interceptor keeps the rank of
  # the first LoRA model initialised in a process.)
  wrong = jax.tree.map(lambda x: x[..., :2] if x.shape[-1] == 4 else x, back)
  with pytest.raises(ValueError, match="do not match"):
    create_train_state(model, base, optax.sgd(0.1), lora=wrong)


def test_bad_adapters_fail_with_a_clear_error(tmp_path, tiny_lora):
  _, _, lora = tiny_lora
  with pytest.raises(ValueError, match="over the"):
    adapters.save_adapter(str(tmp_path / "big"), lora, _meta(), max_bytes=1000)
  with pytest.raises(ValueError, match="not LoRA factors"):
    adapters.save_adapter(str(tmp_path / "x"), {"layer_0": {"w": np.zeros(3)}}, _meta())
  d = tmp_path / "ok"
  adapters.save_adapter(str(d), lora, _meta())
  with open(d / "lora.npz", "ab") as f:
    f.write(b"0")
  with pytest.raises(ValueError, match="checksum"):
    adapters.load_adapter(str(d))
  with pytest.raises(FileNotFoundError, match="not an adapter directory"):
    adapters.load_adapter(str(tmp_path))


def test_config_checks_name_the_field(tmp_path, tiny_lora):
  _, _, lora = tiny_lora
  adapters.save_adapter(str(tmp_path), lora, _meta())
  adapters.check_student("tiny", str(tmp_path), 0)
  adapters.check_student("tiny", str(tmp_path), 4)
  adapters.check_student("gemma3_270m", None, 0)          # not an adapter: nothing to check
  with pytest.raises(ValueError, match="config.model"):
    adapters.check_student("gemma3_270m", str(tmp_path), 0)
  with pytest.raises(ValueError, match="config.lora_rank"):
    adapters.check_student("tiny", str(tmp_path), 8)


def test_a_rank_16_adapter_of_the_270m_fits_the_size_limit():
  """From shapes only: the bfloat16 factors of the 270M at the study's rank stay under 10 MB."""
  model = models.build_model("gemma3_270m", lora_rank=16)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 4), np.int32)))
  flat = adapters._flatten(shapes["params"])  # pylint: disable=protected-access
  n = sum(int(np.prod(v.shape)) for k, v in flat.items() if "/lora/" in k)
  assert 0 < 2 * n < adapters.MAX_BYTES, n


def test_an_adapter_student_starts_the_sharded_train_state_from_its_factors(tmp_path, tiny_lora):
  """config.checkpoint = an adapter dir: the Experiment loads the adapter's base (sharded over the
  training mesh) and the Trainer's state, built in one jit on that mesh, starts from the
  adapter's factors on top of that base; the initial params are then released."""
  from configs import tiny_test  # pylint: disable=g-import-not-at-top
  from sml_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from sml_jax.experiment import Experiment  # pylint: disable=g-import-not-at-top
  from sml_jax.stages.trainer import Trainer  # pylint: disable=g-import-not-at-top
  from sml_jax.training import train_state as ts  # pylint: disable=g-import-not-at-top
  _, base, lora = tiny_lora
  adapters.save_adapter(str(tmp_path), lora, _meta())
  _, want = adapters.load_adapter(str(tmp_path))
  c = tiny_test.get_config()
  c.checkpoint, c.lora_rank = str(tmp_path), 0
  exp = Experiment(config_lib.to_spec(c))
  state = Trainer(exp).initial_state()
  assert exp._initial is None  # pylint: disable=protected-access
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), b)
  for a, b in zip(jax.tree.leaves(state.frozen), jax.tree.leaves(base)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b.astype(a.dtype)))
  shardings = ts.state_shardings(state, exp.mesh)
  assert all(x.sharding == s for x, s in zip(jax.tree.leaves(state), jax.tree.leaves(shardings)))
