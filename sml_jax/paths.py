"""Every file the project reads or writes goes through here, so a workdir may be a local path or
a `gs://bucket/dir` URL (arrays go through orbax / tensorstore, which take both natively).

    paths.join(workdir, "eval", "before_x.json")     # "gs://b/run/eval/before_x.json"
    paths.write_text_atomic(path, text)              # readers never see half a file
    with paths.Appender(path) as f: f.write(line)    # metrics.jsonl, eval partials

`etils.epath` does the I/O: the OS for local paths, gcsfs (fsspec) for gs:// (`EPATH_USE_TF` is
set to false in `sml_jax/__init__.py`, so TF's gfile is never used: one GCS client, configured by
the environment variables listed in the README, e.g. `STORAGE_EMULATOR_HOST`).

GCS objects cannot be appended to or renamed: `Appender` keeps the object's text and uploads it
whole at every flush (one upload replaces the object atomically), and an atomic write is one
upload. Local files keep the usual append and write-to-temp-then-rename.
"""

from __future__ import annotations

import os
import posixpath
from typing import Iterable

from etils import epath

PathLike = str | os.PathLike
REMOTE_SCHEMES = ("gs://",)


def is_remote(path: PathLike) -> bool:
  return os.fspath(path).startswith(REMOTE_SCHEMES)


def resolve(path: PathLike) -> str:
  """An absolute local path, or the URL itself (never `os.path.abspath` a URL: 'gs:/b')."""
  path = os.fspath(path)
  if is_remote(path):
    return path.rstrip("/")
  if "://" in path:
    raise ValueError(f"Unsupported path scheme in {path!r}; use a local path or gs://bucket/dir.")
  return os.path.abspath(path)


def join(base: PathLike, *parts: str) -> str:
  base = os.fspath(base)
  return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def path(p: PathLike) -> epath.Path:
  return epath.Path(os.fspath(p))


def exists(p: PathLike) -> bool:
  return path(p).exists()


def isdir(p: PathLike) -> bool:
  return path(p).is_dir()


def makedirs(p: PathLike) -> None:
  """Creates a local directory (and parents); a no-op on GCS, which has no directories."""
  if not is_remote(p):
    os.makedirs(p, exist_ok=True)


def listdir(p: PathLike) -> list[str]:
  """Names in directory `p` ([] when it does not exist)."""
  d = path(p)
  return sorted(c.name for c in d.iterdir()) if d.exists() else []


def remove(p: PathLike) -> None:
  path(p).unlink()


def read_text(p: PathLike) -> str:
  return path(p).read_text(encoding="utf-8")


def read_text_or_none(p: PathLike) -> str | None:
  """The file's text, or None when it does not exist (one request on GCS, no exists() race)."""
  try:
    return read_text(p)
  except FileNotFoundError:
    return None


def write_bytes(p: PathLike, data: bytes) -> None:
  path(p).write_bytes(data)


def write_text_atomic(p: PathLike, text: str) -> None:
  """Readers (the report, a viewer refresh, another host) never see a half-written file."""
  p = os.fspath(p)
  if is_remote(p):
    path(p).write_text(text, encoding="utf-8")   # One upload: the object appears whole.
    return
  tmp = f"{p}.tmp.{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, p)


class Appender:
  """An append-only text file that survives a kill after every `flush` (each `write` flushes).

  Local: an ordinary file opened for append. GCS: the object's text is read once, kept, and
  uploaded whole at every write (O(size) per write: fine for one line per training iteration).
  """

  def __init__(self, p: PathLike):
    self.path = os.fspath(p)
    self._remote = is_remote(self.path)
    if self._remote:
      self._text = read_text_or_none(self.path) or ""
      self._file = None
    else:
      makedirs(os.path.dirname(self.path) or ".")
      self._file = open(self.path, "a", encoding="utf-8")  # pylint: disable=consider-using-with

  def write(self, text: str) -> None:
    self.writelines([text])

  def writelines(self, lines: Iterable[str]) -> None:
    if self._remote:
      self._text += "".join(lines)
      path(self.path).write_text(self._text, encoding="utf-8")
    else:
      self._file.writelines(lines)
      self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
