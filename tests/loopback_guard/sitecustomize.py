"""Test-only network guard, loaded by Python at start-up when this directory is on PYTHONPATH.

Refuses (and reports on stderr) every socket connection from Python code to an address outside
the loopback range, so a client that would look up a cloud metadata server or a real endpoint
fails the test at once instead of reaching out. (Native clients such as tensorstore's do not go
through Python sockets; they are pointed at loopback by the environment, see gcs_server.py.)
"""

import ipaddress
import socket
import sys

_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


def _check(sock, address):
  if sock.family in (socket.AF_INET, socket.AF_INET6):
    host = address[0]
    try:
      ok = ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
      ok = host == "localhost"
    if not ok:
      print(f"LOOPBACK GUARD: refused a connection to {address!r}", file=sys.stderr, flush=True)
      raise ConnectionRefusedError(f"loopback guard: {address!r} is not a loopback address")


def connect(self, address):
  _check(self, address)
  return _connect(self, address)


def connect_ex(self, address):
  _check(self, address)
  return _connect_ex(self, address)


socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
