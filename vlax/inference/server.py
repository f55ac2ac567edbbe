"""`vlax serve`: a small JSON-over-HTTP policy server (stdlib only, localhost by default).

Endpoints:
  GET  /health -> {"status": "ok", "datasets": [...], "cameras": [...], "chunk_len": K,
                   "action_dims": {dataset: A}, "max_len": L}
  POST /act    <- {"instruction": str,
                   "observation": {"image_<camera>": IMAGE, ..., "proprio": [float, ...]},
                   "dataset": str (optional when the checkpoint has one dataset),
                   "return_tokens": bool (optional)}
               -> {"actions": [[float] * A] * K, "dataset": str, "chunk_len": K,
                   "action_dim": A, "latency_s": float[, "tokens": [int, ...]]}
  IMAGE is base64 of a PNG/JPEG file, or {"b64": base64 of raw uint8 bytes,
  "shape": [H, W, 3]} (no encode/decode cost); null = camera missing.

Bad requests get status 400 and {"error": message naming the field}; the server keeps
running. Predictions are serialized with a lock (one model, one device).

Limits (checked before any decoding, tokenizing or the lock): bodies up to
MAX_BODY_BYTES, Content-Type application/json (else 415: a web page cannot post to a
localhost server without a CORS preflight), instructions up to MAX_INSTRUCTION_CHARS,
images up to MAX_IMAGE_SIDE pixels a side, at most MAX_OBSERVATION_KEYS observation
entries and MAX_PROPRIO_DIMS proprio values; a client that sends less than its
Content-Length (or goes idle) is dropped after READ_TIMEOUT_S.
"""

from __future__ import annotations

import base64
import binascii
import http.server
import io
import json
import signal
import socket
import sys
import threading
import time
from typing import Any, Mapping

import numpy as np
from PIL import Image, UnidentifiedImageError

from vlax.errors import VlaxError
from vlax.inference.policy import Policy, check_instruction

MAX_BODY_BYTES = 8 << 20  # a few raw 640x480 cameras as base64
MAX_INSTRUCTION_CHARS = 2000
MAX_IMAGE_SIDE = 4096
MAX_OBSERVATION_KEYS = 32
MAX_PROPRIO_DIMS = 1024
READ_TIMEOUT_S = 10.0
ALLOWED_FIELDS = ("instruction", "observation", "dataset", "return_tokens")


def encode_image(image: np.ndarray, raw: bool = True) -> Any:
  """uint8 [H, W, 3] -> the JSON IMAGE form (raw bytes + shape, or base64 PNG)."""
  image = np.ascontiguousarray(image, np.uint8)
  if raw:
    return {"b64": base64.b64encode(image.tobytes()).decode("ascii"),
            "shape": list(image.shape)}
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_image(value: Any, key: str) -> np.ndarray | None:
  """The JSON IMAGE form -> uint8 [H, W, 3] (or None); VlaxError names the key."""
  if value is None:
    return None
  if isinstance(value, Mapping):
    if "b64" not in value or "shape" not in value:
      raise VlaxError(f"observation[{key!r}]: a raw image needs 'b64' and 'shape', got "
                      f"keys {sorted(value)}")
    shape = value["shape"]
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3 or shape[2] != 3
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape)
        or not all(0 < s <= MAX_IMAGE_SIDE for s in shape[:2])):
      raise VlaxError(f"observation[{key!r}]: raw image 'shape' must be [H, W, 3] with "
                      f"0 < H, W <= {MAX_IMAGE_SIDE}, got {str(shape)[:80]}")
    if not isinstance(value["b64"], str):
      raise VlaxError(f"observation[{key!r}]: 'b64' must be a base64 string")
    if len(value["b64"]) > 4 * (int(np.prod(shape)) + 2) // 3 + 4:
      raise VlaxError(f"observation[{key!r}]: 'b64' is longer than shape "
                      f"{list(shape)} needs")
    try:
      data = base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, TypeError, ValueError) as e:
      raise VlaxError(f"observation[{key!r}]: bad raw image ({e})") from None
    shape = tuple(shape)
    if int(np.prod(shape)) != len(data):
      raise VlaxError(f"observation[{key!r}]: {len(data)} bytes do not fill shape "
                      f"{list(shape)} (uint8)")
    return np.frombuffer(data, np.uint8).reshape(shape)
  if not isinstance(value, str):
    raise VlaxError(f"observation[{key!r}] must be a base64 PNG/JPEG string or "
                    f"{{'b64', 'shape'}}, got {type(value).__name__}")
  try:
    data = base64.b64decode(value, validate=True)
  except (binascii.Error, ValueError) as e:
    raise VlaxError(f"observation[{key!r}]: not valid base64 ({e})") from None
  try:
    with Image.open(io.BytesIO(data)) as img:  # reads the header only
      if max(img.size) > MAX_IMAGE_SIDE:
        raise VlaxError(f"observation[{key!r}]: image is {img.size[0]}x{img.size[1]}, "
                        f"at most {MAX_IMAGE_SIDE} pixels a side are accepted")
      return np.asarray(img.convert("RGB"), np.uint8)
  except VlaxError:
    raise
  except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
    raise VlaxError(f"observation[{key!r}]: not a decodable image ({e})") from None


def parse_request(body: bytes) -> dict[str, Any]:
  """Request JSON -> {instruction, observation (numpy), dataset, return_tokens}."""
  try:
    req = json.loads(body.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise VlaxError(f"request body is not JSON: {e}") from None
  if not isinstance(req, dict):
    raise VlaxError(f"request must be a JSON object, got {type(req).__name__}")
  unknown = sorted(set(req) - set(ALLOWED_FIELDS))
  if unknown:
    raise VlaxError(f"unknown request field(s) {unknown}; allowed: {list(ALLOWED_FIELDS)}")
  instruction = req.get("instruction")
  if len(instruction if isinstance(instruction, str) else "") > MAX_INSTRUCTION_CHARS:
    raise VlaxError(f"request field 'instruction' has {len(instruction)} characters, at "
                    f"most {MAX_INSTRUCTION_CHARS} are accepted")
  instruction = check_instruction(instruction, "request field 'instruction'")
  return_tokens = req.get("return_tokens", False)
  if not isinstance(return_tokens, bool):
    raise VlaxError(f"request field 'return_tokens' must be true or false, got "
                    f"{return_tokens!r}")
  obs_in = req.get("observation")
  if not isinstance(obs_in, dict):
    raise VlaxError("request field 'observation' must be an object of camera images")
  if len(obs_in) > MAX_OBSERVATION_KEYS:
    raise VlaxError(f"request field 'observation' has {len(obs_in)} entries, at most "
                    f"{MAX_OBSERVATION_KEYS} are accepted")
  obs: dict[str, Any] = {}
  for key, value in obs_in.items():
    if key.startswith("image_") and key.endswith("_mask"):
      if not isinstance(value, bool):  # "false" is not false
        raise VlaxError(f"observation[{key!r}] must be true or false, got {value!r}")
      obs[key] = value
    elif key.startswith("image_"):
      obs[key] = decode_image(value, key)  # None: camera missing (masked)
    elif key in ("proprio", "proprio_mask"):
      if (not isinstance(value, list) or len(value) > MAX_PROPRIO_DIMS
          or not all(isinstance(v, (int, float)) for v in value)):
        raise VlaxError(f"observation[{key!r}] must be a flat list of at most "
                        f"{MAX_PROPRIO_DIMS} numbers")
      obs[key] = np.asarray(value, bool if key == "proprio_mask" else np.float32)
    else:
      raise VlaxError(f"unknown observation key {key!r} (expected image_<camera>, "
                      f"image_<camera>_mask, proprio, proprio_mask)")
  dataset = req.get("dataset")
  if dataset is not None and not isinstance(dataset, str):
    raise VlaxError("request field 'dataset' must be a string")
  return {"instruction": instruction, "observation": obs, "dataset": dataset,
          "return_tokens": return_tokens}


def health(policy) -> dict[str, Any]:
  dims = {}
  for key in policy.dataset_keys:
    try:
      dims[key] = policy.action_dim(key)
    except VlaxError:  # unusable statistics: /act answers 400 for this key
      dims[key] = None
  return {"status": "ok", "datasets": policy.dataset_keys, "cameras": list(policy.cameras),
          "chunk_len": policy.chunk_len, "action_dims": dims,
          "max_len": policy.seq.max_len}


def check_port(port: int) -> None:
  if not isinstance(port, int) or not 0 <= port <= 65535:
    raise VlaxError(f"--port must be in 0..65535 (0 = any free port), got {port}")


def make_server(policy, host: str = "127.0.0.1", port: int = 8000,
                verbose: bool = False, read_timeout: float = READ_TIMEOUT_S
                ) -> http.server.ThreadingHTTPServer:
  """An HTTP server bound to (host, port) (port 0 = any free port), not yet serving."""
  check_port(port)
  lock = threading.Lock()

  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = read_timeout  # socket timeout: a stalled or idle client is dropped

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
      if verbose:
        super().log_message(format, *args)

    def _reply(self, status: int, payload: Mapping[str, Any]) -> None:
      data = json.dumps(payload).encode("utf-8")
      self.send_response(status)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data)

    def do_GET(self):  # pylint: disable=invalid-name
      if self.path.rstrip("/") == "/health":
        self._reply(200, health(policy))
      else:
        self._reply(404, {"error": f"unknown path {self.path!r}; use GET /health or "
                                   f"POST /act"})

    def do_POST(self):  # pylint: disable=invalid-name
      if self.path.rstrip("/") != "/act":
        self._reply(404, {"error": f"unknown path {self.path!r}; use POST /act"})
        return
      try:
        n = int(self.headers.get("Content-Length", "0"))
      except ValueError:
        n = -1
      if n <= 0 or n > MAX_BODY_BYTES:
        self.close_connection = True
        self._reply(400 if n <= 0 else 413,
                    {"error": f"request needs a JSON body of 1..{MAX_BODY_BYTES} bytes "
                              f"(Content-Length {self.headers.get('Content-Length')})"})
        return
      ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
      if ctype != "application/json":
        self.close_connection = True
        self._reply(415, {"error": f"Content-Type must be application/json, got "
                                   f"{self.headers.get('Content-Type')!r}"})
        return
      try:
        body = self.rfile.read(n)
      except (socket.timeout, OSError):
        self.close_connection = True  # stalled client: drop it, free the thread
        return
      if len(body) != n:
        self.close_connection = True
        self._reply(400, {"error": f"request body has {len(body)} bytes, Content-Length "
                                   f"says {n}"})
        return
      try:
        req = parse_request(body)
      except Exception as e:  # pylint: disable=broad-except  (malformed input: a 400)
        self._reply(400, {"error": str(e) if isinstance(e, VlaxError) else
                                   f"malformed request ({type(e).__name__}: {e})"})
        return
      try:
        start = time.perf_counter()
        with lock:
          out = policy.predict_action(req["observation"], req["instruction"],
                                      dataset=req["dataset"],
                                      return_tokens=req["return_tokens"])
        latency = time.perf_counter() - start
      except VlaxError as e:
        self._reply(400, {"error": str(e)})
        return
      except Exception as e:  # pylint: disable=broad-except
        self._reply(500, {"error": f"{type(e).__name__}: {e}"})
        return
      actions, tokens = out if req["return_tokens"] else (out, None)
      dataset = policy._resolve_dataset(req["dataset"])  # pylint: disable=protected-access
      payload = {"actions": np.asarray(actions, np.float64).tolist(), "dataset": dataset,
                 "chunk_len": int(actions.shape[0]), "action_dim": int(actions.shape[1]),
                 "latency_s": latency}
      if tokens is not None:
        payload["tokens"] = np.asarray(tokens).tolist()
      self._reply(200, payload)

  server = http.server.ThreadingHTTPServer((host, port), Handler)
  server.daemon_threads = True
  return server


def serve(checkpoint: str, host: str = "127.0.0.1", port: int = 8000,
          step: int | None = None, dataset: str | None = None, warmup: bool = True,
          verbose: bool = True) -> None:
  """Loads the policy and serves it until interrupted (Ctrl-C)."""
  check_port(port)  # before the minutes of loading and warm-up
  policy = Policy(checkpoint, step, dataset)
  if warmup:  # compile every dataset's decode now, not on the first request
    for key in policy.dataset_keys if dataset is None else [policy.dataset]:
      try:
        policy.warmup(1, key)
      except VlaxError as e:
        print(f"warning: dataset {key!r} is not servable: {e}", flush=True)
  try:
    server = make_server(policy, host, port, verbose=verbose)
  except OSError as e:
    raise VlaxError(f"cannot listen on {host}:{port}: {e}") from None
  h, p = server.server_address[:2]
  print(f"serving {policy} on http://{h}:{p} (GET /health, POST /act)", flush=True)
  serve_until_stopped(server.serve_forever, server.shutdown, server.server_close)


def serve_until_stopped(serve_forever, shutdown, *close) -> None:
  """Runs `serve_forever` in a thread until SIGTERM or Ctrl-C, then stops it cleanly
  (the accept loop ends, the socket closes) and says so in one line: SIGTERM is how
  process managers stop a server, not a crash."""
  stop = threading.Event()
  prev = None
  if threading.current_thread() is threading.main_thread():
    prev = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
  thread = threading.Thread(target=serve_forever, name="vlax-serve", daemon=True)
  thread.start()
  why = "SIGTERM"
  try:
    while not stop.wait(0.5) and thread.is_alive():
      pass
  except KeyboardInterrupt:
    why = "Ctrl-C"
  finally:
    shutdown()
    for fn in close:
      fn()
    thread.join(timeout=10)
    if prev is not None:
      signal.signal(signal.SIGTERM, prev)
  if stop.is_set() or why == "Ctrl-C":
    print(f"server stopped ({why})", file=sys.stderr, flush=True)
