"""Your own data through tfds or seqio: datasets the test builds itself (no network), read through
curriculum / eval entries with a field mapping, verified like the built-in tasks."""

import numpy as np
import pytest

from sml_jax import config as config_lib
from sml_jax.tasks import registry

MATH = [  # GSM8K-style rows: the answer field holds the worked solution and `#### N`.
    {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
     "answer": "3 + 4 = 7\n#### 7", "uid": "m1"},
    {"question": "A box holds 12 eggs. How many eggs are in 3 boxes?",
     "answer": "12 * 3 = 36\n#### 36", "uid": "m2"},
    {"question": "Sara reads 10 pages a day for 1,200 days. How many pages?",
     "answer": "10 * 1200 = 12000\n#### 12,000", "uid": "m3"},
]
MATH_TEST = [{"question": "What is 5 + 6?", "answer": "5 + 6 = 11\n#### 11", "uid": "t1"}]
CODE = [
    {"text": "Write a function that adds two numbers.", "code": "def add(a, b):\n    return a + b",
     "test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]},
    {"text": "Write a function that doubles a number.", "code": "def double(x):\n    return 2 * x",
     "test_list": ["assert double(4) == 8"]},
]


def _entry(spec: str):
  """A curriculum string, as written on the command line -> (name, kwargs) of its one entry."""
  (name, weight, kwargs), = config_lib.parse_curriculum(spec)
  assert weight == 1.0
  return name, kwargs


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A data_dir with two prepared tfds datasets, written by tfds itself from in-test rows."""
  import tensorflow_datasets as tfds
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  math_features = tfds.features.FeaturesDict(
      {"question": tfds.features.Text(), "answer": tfds.features.Text(),
       "uid": tfds.features.Text()})
  tfds.dataset_builders.store_as_tfds_dataset(
      name="sml_test_math", version="1.0.0", features=math_features, data_dir=data_dir,
      split_datasets={"train": list(enumerate(MATH)), "test": list(enumerate(MATH_TEST))},
      disable_shuffling=True)
  code_features = tfds.features.FeaturesDict(
      {"text": tfds.features.Text(), "code": tfds.features.Text(),
       "test_list": tfds.features.Sequence(tfds.features.Text())})
  tfds.dataset_builders.store_as_tfds_dataset(
      name="sml_test_code", version="1.0.0", features=code_features, data_dir=data_dir,
      split_datasets={"train": list(enumerate(CODE))}, disable_shuffling=True)
  return data_dir


def test_tfds_math_entry_reads_maps_and_verifies(tfds_dir):
  name, kwargs = _entry(f"tfds:1:dataset=sml_test_math;data_dir={tfds_dir};statement=question;"
                        "answer=answer;answer_after=####;privileged=answer;id=uid")
  task = registry.get_task(name, **kwargs)
  problems = {p.id: p for p in task.problems("train")}
  assert sorted(problems) == ["m1", "m2", "m3"]
  p = problems["m3"]
  assert p.task == "tfds" and p.domain == "math"
  assert p.statement == MATH[2]["question"]
  assert p.answer == "12000" and p.privileged == MATH[2]["answer"]
  assert [q.id for q in task.problems("eval")] == ["t1"]  # eval_split defaults to "test"
  good, wrong, unanchored = task.verify_batch([p, p, p], ["Final answer: 12000", "Final answer: 12",
                                                          "It is 12000."])
  assert good.attempted and good.correct
  assert wrong.attempted and not wrong.correct
  assert not unanchored.attempted and unanchored.format_failure  # strict, as the built-ins
  assert task.leaked(p, "The answer is 12,000.") and not task.leaked(p, "Multiply 10 by 1200.")
  # Rollouts look the verifier up by the problem's task name alone: the same verdicts.
  bare = registry.get_task("tfds")
  assert [v.correct for v in bare.verify_batch([p, p], ["Final answer: 12000", "Final answer: 1"])
          ] == [True, False]
  # A curriculum draws from it like any task.
  drawn = registry.sample_problems([(name, 1.0, kwargs)], 5, rng=0)
  assert {q.id for q in drawn} == {"m1", "m2", "m3"}


def test_tfds_math_without_privileged_gets_the_answer_and_lenient_travels(tfds_dir):
  task = registry.get_task("tfds", dataset="sml_test_math", data_dir=tfds_dir, statement="question",
                           answer="answer", answer_after="####", answer_format="lenient")
  p = next(q for q in task.problems("train") if q.answer == "7")
  assert p.privileged == "Final answer: 7" and p.id == str(MATH.index(MATH[0]))
  # answer_format is the entry's setting, kept by the verifier rollouts use.
  assert registry.get_task("tfds").verify(p, "So he has 7 apples.").correct


def test_tfds_code_entry_runs_its_tests_in_the_sandbox(tfds_dir):
  name, kwargs = _entry(f"tfds:1:dataset=sml_test_code;data_dir={tfds_dir};statement=text;"
                        "privileged=code;tests=test_list;timeout=10")
  task = registry.get_task(name, **kwargs)
  problems = sorted(task.problems("train"), key=lambda q: q.id)
  add = problems[0]
  assert add.domain == "code" and add.entry_point == "add"
  assert add.tests == tuple(CODE[0]["test_list"]) and add.privileged == CODE[0]["code"]
  good, bad = task.verify_batch(
      [add, add], ["```python\ndef add(a, b):\n    return a + b\n```",
                   "```python\ndef add(a, b):\n    return a - b\n```"])
  assert good.attempted and good.correct
  assert bad.attempted and not bad.correct and "add(1, 2)" in bad.feedback
  assert task.leaked(add, f"```python\n{CODE[0]['code']}\n```")


def test_tfds_bad_entries_fail_clearly(tfds_dir):
  with pytest.raises(ValueError, match=r"no field 'problem' \(fields: \['answer', 'question', "
                     r"'uid'\]\)"):
    registry.get_task("tfds", dataset="sml_test_math", data_dir=tfds_dir, statement="problem",
                      answer="answer").problems("train")
  with pytest.raises(ValueError, match=r"no split 'validation' \(splits: \['test', 'train'\]\)"):
    registry.get_task("tfds", dataset="sml_test_math", data_dir=tfds_dir, statement="question",
                      answer="answer", eval_split="validation").problems("eval")
  with pytest.raises(ValueError, match="not found in data_dir"):
    registry.get_task("tfds", dataset="sml_no_such_dataset", data_dir=tfds_dir, statement="q",
                      answer="a").problems("train")
  with pytest.raises(ValueError, match="needs answer=FIELD"):
    registry.get_task("tfds", dataset="sml_test_math", data_dir=tfds_dir, statement="question")
  with pytest.raises(ValueError, match="needs tests=FIELD and privileged=FIELD"):
    registry.get_task("tfds", dataset="sml_test_code", statement="text", tests="test_list")
  with pytest.raises(ValueError, match="needs data_dir="):
    registry.get_task("tfds", dataset="sml_test_math", statement="question",
                      answer="answer").problems("train")


def test_an_eval_entry_naming_a_tfds_dataset_passes_config_validation(tfds_dir):
  cfg = config_lib.base_config()
  cfg.eval.tasks = (f"tfds:1:dataset=sml_test_math;data_dir={tfds_dir};statement=question;"
                    "answer=answer;answer_after=####")
  spec = config_lib.to_spec(cfg)
  entry = next(st for st in spec.stages if st.kind == "eval").tasks[0]
  assert entry.name == "tfds" and entry.kwargs["dataset"] == "sml_test_math"


@pytest.fixture(scope="module")
def seqio_task(tmp_path_factory):
  """A seqio Task over a TFRecord of tf.train.Examples written here, with a rekey preprocessor."""
  import functools
  import seqio
  import tensorflow as tf
  path = str(tmp_path_factory.mktemp("seqio") / "math.tfrecord")
  with tf.io.TFRecordWriter(path) as w:
    for row in MATH:
      feats = {k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode()]))
               for k, v in row.items()}
      w.write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
  name = "sml_test_seqio_math"
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  text = tf.io.FixedLenFeature([], tf.string)
  seqio.TaskRegistry.add(
      name,
      source=seqio.TFExampleDataSource({"train": path},
                                       {"question": text, "answer": text, "uid": text}),
      preprocessors=[functools.partial(seqio.preprocessors.rekey,
                                       key_map={"inputs": "question", "targets": "answer",
                                                "uid": "uid"})],
      output_features={})
  return name


def test_seqio_task_entry_reads_its_preprocessed_examples(seqio_task):
  name, kwargs = _entry(f"seqio:1:task={seqio_task};statement=inputs;answer=targets;"
                        "answer_after=####;eval_split=train;id=uid")
  task = registry.get_task(name, **kwargs)
  problems = {p.id: p for p in task.problems("train")}
  assert sorted(problems) == ["m1", "m2", "m3"]
  p = problems["m2"]
  assert p.task == "seqio" and p.statement == MATH[1]["question"] and p.answer == "36"
  assert p.privileged == "Final answer: 36"
  assert task.verify(p, "Final answer: 36").correct and not task.verify(p, "Final answer: 35").correct
  with pytest.raises(ValueError, match=r"no split 'test' \(splits: \['train'\]\)"):
    registry.get_task("seqio", task=seqio_task, statement="inputs", answer="targets"
                      ).problems("eval")
  with pytest.raises(ValueError, match="is not registered"):
    registry.get_task("seqio", task="sml_no_such_task", statement="inputs",
                      answer="targets").problems("train")


def test_field_values_convert_to_text():
  from sml_jax.tasks import external
  assert external.to_text(np.int64(72)) == "72" and external.to_text(np.float32(2.5)) == "2.5"
  assert external.to_text(np.array(b"hi")) == "hi" and external.to_text(3.0) == "3"
  assert external.to_texts(np.array([b"a", b"b"], dtype=object)) == ("a", "b")
  assert external.field({"a": {"b": 1}}, "a.b", "here") == 1
