"""sml_jax.paths on local paths (gs:// URLs run against a local GCS server in test_realscale.py)
and the single-process preemption watch."""

import os
import signal

import pytest

from sml_jax import paths
from sml_jax.parallel import preemption


def test_resolve_keeps_urls_and_makes_local_paths_absolute(tmp_path, monkeypatch):
  assert paths.resolve("gs://bkt/runs/x/") == "gs://bkt/runs/x"   # not 'gs:/bkt/...'
  assert paths.join("gs://bkt/runs", "eval", "a.json") == "gs://bkt/runs/eval/a.json"
  monkeypatch.chdir(tmp_path)
  assert paths.resolve("wd") == str(tmp_path / "wd")
  with pytest.raises(ValueError, match="Unsupported path scheme"):
    paths.resolve("s4://bkt/x")
  assert paths.is_remote("gs://b") and not paths.is_remote(str(tmp_path))


def test_local_files_append_and_atomic_writes(tmp_path):
  p = str(tmp_path / "sub" / "log.jsonl")
  assert paths.read_text_or_none(p) is None and paths.listdir(str(tmp_path / "nope")) == []
  with paths.Appender(p) as f:
    f.write("a\n")
    assert paths.read_text(p) == "a\n"   # Flushed at every write.
  with paths.Appender(p) as f:
    f.writelines(["b\n", "c\n"])
  assert paths.read_text(p) == "a\nb\nc\n"
  paths.write_text_atomic(p, "new\n")
  assert paths.read_text(p) == "new\n" and paths.listdir(str(tmp_path / "sub")) == ["log.jsonl"]
  paths.remove(p)
  assert not paths.exists(p)


def test_single_process_sigterm_is_seen_by_check_and_agree():
  watch = preemption.Watch()
  assert not watch.agree() and watch.agree(local=True)
  before = signal.getsignal(signal.SIGTERM)
  watch.install()
  try:
    watch.check()                        # No notice yet.
    os.kill(os.getpid(), signal.SIGTERM)
    assert watch.notice() and watch.agree()
    with pytest.raises(preemption.Preempted):
      watch.check()
  finally:
    watch.uninstall()
  assert signal.getsignal(signal.SIGTERM) == before   # The previous handler is back.
