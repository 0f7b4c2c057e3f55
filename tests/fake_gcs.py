"""An in-process stand-in for Google Cloud Storage, for gs:// workdir tests.

Two doors onto one in-memory store (FakeGCS.store, keys 'bucket/object'):

* `FakeGCS`: an fsspec memory filesystem registered for the gs/gcs protocols,
  where gcsfs would be. etils.epath's gs:// code (its fsspec backend) runs
  unchanged on it: the project's writers and Orbax's metadata files.
* `serve()`: a small HTTP server speaking the part of the GCS JSON API that
  TensorStore's gcs driver uses (media download with Range, media upload,
  delete, list, generation preconditions), which Orbax's array data goes
  through. TensorStore is pointed at it by TENSORSTORE_GCS_HTTP_URL, with
  GOOGLE_AUTH_TOKEN_FOR_TESTING as its credentials.

A fake: no resumable uploads, no real auth, no eventual-consistency
effects. It shows that the code addresses gs:// correctly end to end, not
that a real bucket accepts it.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

from fsspec.implementations.memory import MemoryFileSystem


class FakeGCS(MemoryFileSystem):
  """gcsfs's path style, in memory: 'bucket/key' without the protocol, and
  objects need no folders."""
  protocol = ("gs", "gcs")
  root_marker = ""
  store: dict = {}
  pseudo_dirs = [""]

  @classmethod
  def _strip_protocol(cls, path):
    path = str(path)
    for prefix in ("gs://", "gcs://"):
      if path.startswith(prefix):
        path = path[len(prefix):]
    return path.strip("/")


def reset() -> None:
  FakeGCS.store.clear()
  FakeGCS.pseudo_dirs[:] = [""]
  _GENERATIONS.clear()


_LOCK = threading.Lock()
_COUNTER = itertools.count(1)
_GENERATIONS: dict = {}  # key -> (the stored file object, its generation)


def _generation(key: str) -> int:
  """0 if absent; else a number that changes whenever the object is
  replaced (through either door)."""
  f = FakeGCS.store.get(key)
  if f is None:
    return 0
  known = _GENERATIONS.get(key)
  if known is None or known[0] is not f:
    _GENERATIONS[key] = (f, next(_COUNTER))
  return _GENERATIONS[key][1]


def _data(key: str) -> bytes:
  return bytes(FakeGCS.store[key].getbuffer())


def _metadata(key: str) -> dict:
  bucket, name = key.split("/", 1)
  return {"kind": "storage#object", "bucket": bucket, "name": name,
          "generation": str(_generation(key)), "metageneration": "1",
          "size": str(len(_data(key)))}


def _precondition(query: dict, key: str) -> int | None:
  """412 or 304 when the request's generation conditions fail."""
  gen = _generation(key)
  if "ifGenerationMatch" in query and int(query["ifGenerationMatch"][0]) != gen:
    return 412
  if ("ifGenerationNotMatch" in query
      and int(query["ifGenerationNotMatch"][0]) == gen):
    return 304
  return None


_OBJECT = re.compile(r"^/storage/v1/b/([^/]+)/o/(.+)$")
_LIST = re.compile(r"^/storage/v1/b/([^/]+)/o/?$")
_UPLOAD = re.compile(r"^/upload/storage/v1/b/([^/]+)/o$")


class _Handler(BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"

  def log_message(self, *args):
    pass

  def _send(self, code, body=b"", headers=()):
    self.send_response(code)
    for k, v in headers:
      self.send_header(k, v)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def _json(self, code, obj):
    self._send(code, json.dumps(obj).encode(),
               [("Content-Type", "application/json")])

  def _error(self, code):
    self._json(code, {"error": {"code": code, "message": self.path}})

  def do_GET(self):
    url = urlparse(self.path)
    query = parse_qs(url.query)
    if m := _OBJECT.match(url.path):
      self._get_object(f"{m[1]}/{unquote(m[2])}", query)
    elif m := _LIST.match(url.path):
      self._list(m[1], query)
    else:
      self._error(404)

  def _get_object(self, key, query):
    with _LOCK:
      if key not in FakeGCS.store:
        return self._error(404)
      if code := _precondition(query, key):
        return self._send(code)
      data, meta = _data(key), _metadata(key)
    if query.get("alt") != ["media"]:
      return self._json(200, meta)
    headers = [("x-goog-generation", meta["generation"])]
    if rng := self.headers.get("Range"):
      first, last = rng.split("=", 1)[1].split("-")
      first = int(first)
      last = int(last) if last else len(data) - 1
      if first >= len(data) > 0:
        return self._send(416, b"", headers)
      part = data[first:last + 1]
      return self._send(206, part, headers + [(
          "Content-Range", f"bytes {first}-{first + len(part) - 1}/"
          f"{len(data)}")])
    self._send(200, data, headers)

  def _list(self, bucket, query):
    prefix = query.get("prefix", [""])[0]
    start = query.get("startOffset", [""])[0]
    end = query.get("endOffset", [None])[0]
    with _LOCK:
      names = sorted(k.split("/", 1)[1] for k in FakeGCS.store
                     if k.startswith(bucket + "/"))
      items = [_metadata(f"{bucket}/{n}") for n in names
               if n.startswith(prefix) and n >= start
               and (end is None or n < end)]
    self._json(200, {"kind": "storage#objects", "items": items})

  def do_POST(self):
    url = urlparse(self.path)
    query = parse_qs(url.query)
    body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
    m = _UPLOAD.match(url.path)
    if not m or query.get("uploadType") != ["media"]:
      return self._error(400)
    key = f"{m[1]}/{query['name'][0]}"
    with _LOCK:
      if _precondition(query, key):
        return self._error(412)
      FakeGCS().pipe_file(key, body)
      meta = _metadata(key)
    self._json(200, meta)

  def do_DELETE(self):
    m = _OBJECT.match(urlparse(self.path).path)
    if not m:
      return self._error(404)
    key = f"{m[1]}/{unquote(m[2])}"
    with _LOCK:
      if key not in FakeGCS.store:
        return self._error(404)
      if _precondition(parse_qs(urlparse(self.path).query), key):
        return self._error(412)
      FakeGCS().rm_file(key)
    self._send(204)


def serve() -> ThreadingHTTPServer:
  """Starts the JSON API server on a free local port (daemon thread)."""
  server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  return server
