"""`vlax serve CKPT --protocol openpi`: openpi's websocket policy protocol, so robot code
written against `openpi_client.websocket_client_policy.WebsocketClientPolicy` (and its
`ActionChunkBroker`) drives a vlax policy unchanged.

The protocol (binary websocket frames, no compression):
  server -> client, once:  msgpack(metadata)  {"dataset", "action_dim", "chunk_len",
                           "state_dim", "observation_keys", "key_map", "cameras", ...}
  client -> server:        msgpack(observation dict)  (numpy arrays as `msgpack_arrays`)
  server -> client:        msgpack({"actions": float32 [chunk_len, action_dim] in robot
                           units, "server_timing": {"infer_ms": float},
                           "decode_errors": int (chunks so far whose action tokens had
                           the wrong length; openpi would have sent zeros)})
  a bad request:           a text frame with the error, then close code 1011 (what
                           openpi's server does on an error); other clients are unaffected.
  GET /healthz             200 "OK" (no upgrade).

The client's keys are mapped to the policy's inputs by a `KeyMap` (LIBERO-style default:
`observation/image` -> the first camera, `observation/wrist_image` -> the wrist camera,
`observation/state` -> proprio, `prompt` -> instruction); a JSON file can give one map, or
one per dataset. `state` may list several keys, concatenated in order (openpi's DROID
client sends `observation/joint_position` and `observation/gripper_position`);
experiments/openpi_key_maps/ holds the maps for openpi's DROID and LIBERO clients. Limits, all checked before any unpacking, decoding or tokenizing of the
part they guard: message size (websockets' `max_size`, close 1009 when exceeded), image
size, prompt length; an idle/read timeout per connection and a cap on open connections.
"""

from __future__ import annotations

import dataclasses
import http
import json
import os
import threading
import time
import traceback
from typing import Any, Mapping

import numpy as np

from vlax.checkpoints import format as ckpt_format
from vlax.checkpoints import weights as weights_lib
from vlax.errors import VlaxError
from vlax.inference import msgpack_arrays
from vlax.inference.policy import Policy
from vlax.inference.server import serve_until_stopped

MAX_MESSAGE_BYTES = 8 << 20  # 2 cameras of 640x480 RGB fit ~4 times over
MAX_PROMPT_CHARS = 2000
MAX_IMAGE_SIDE = 4096
IDLE_TIMEOUT_S = 300.0  # a robot between episodes may stay quiet for minutes
MAX_CLIENTS = 32


@dataclasses.dataclass(frozen=True)
class KeyMap:
  """Client observation keys -> policy inputs (cameras by name, proprio, instruction)."""

  images: Mapping[str, str]  # client key -> policy camera
  state: str | tuple[str, ...] | None = "observation/state"  # several: concatenated
  prompt: str = "prompt"

  @property
  def state_keys(self) -> list[str]:
    if not self.state:
      return []
    return [self.state] if isinstance(self.state, str) else list(self.state)

  @classmethod
  def libero(cls, cameras: tuple[str, ...]) -> "KeyMap":
    """openpi's LIBERO client keys: main image -> first camera, wrist image -> 'wrist'."""
    images = {}
    main = [c for c in cameras if c != "wrist"]
    if main:
      images["observation/image"] = main[0]
    if "wrist" in cameras:
      images["observation/wrist_image"] = "wrist"
    return cls(images=images)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], where: str) -> "KeyMap":
    unknown = sorted(set(d) - {"images", "state", "prompt"})
    if unknown or not isinstance(d.get("images"), Mapping):
      raise VlaxError(f"{where}: a key map is {{'images': {{client_key: camera}}, 'state': "
                      f"key or null, 'prompt': key}} (unknown keys {unknown})")
    state = d.get("state", "observation/state")
    if isinstance(state, (list, tuple)):
      state = tuple(str(k) for k in state) or None
    elif state is not None:
      state = str(state)
    return cls(images={str(k): str(v) for k, v in d["images"].items()}, state=state,
               prompt=str(d.get("prompt", "prompt")))

  @property
  def keys(self) -> list[str]:
    return list(self.images) + self.state_keys + [self.prompt]


def load_key_map(path: str | None, dataset: str, cameras: tuple[str, ...]) -> KeyMap:
  """The key map for `dataset`: from `path` (one map, or {dataset: map}) or LIBERO-style."""
  if not path:
    key_map = KeyMap.libero(cameras)
  else:
    try:
      with open(path) as f:
        d = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise VlaxError(f"key map {path}: {e}") from None
    if isinstance(d, Mapping) and "images" not in d:
      if dataset not in d:
        raise VlaxError(f"key map {path} has maps for {sorted(d)}, none for dataset "
                        f"{dataset!r}")
      d = d[dataset]
    key_map = KeyMap.from_dict(d if isinstance(d, Mapping) else {}, f"key map {path}")
  bad = sorted(set(key_map.images.values()) - set(cameras))
  if bad:
    raise VlaxError(f"key map names camera(s) {bad}; this policy has cameras "
                    f"{list(cameras)}")
  return key_map


def _image(value: Any, key: str) -> np.ndarray:
  if not isinstance(value, np.ndarray):
    raise VlaxError(f"observation[{key!r}] must be a uint8 image array, got "
                    f"{type(value).__name__}")
  if value.ndim == 3 and value.shape[0] == 3 and value.shape[-1] != 3:
    value = np.transpose(value, (1, 2, 0))  # [3, H, W] (openpi clients may send CHW)
  if value.ndim != 3 or value.shape[-1] != 3:
    raise VlaxError(f"observation[{key!r}] must be an image [H, W, 3] (or [3, H, W]), "
                    f"got shape {list(value.shape)}")
  if max(value.shape[:2]) > MAX_IMAGE_SIDE or min(value.shape[:2]) < 1:
    raise VlaxError(f"observation[{key!r}]: image size {list(value.shape[:2])} out of "
                    f"range 1..{MAX_IMAGE_SIDE}")
  if value.dtype != np.uint8:
    raise VlaxError(f"observation[{key!r}] must be uint8, got dtype {value.dtype}")
  return value


def to_policy_inputs(obs: Any, key_map: KeyMap, state_dim: int
                     ) -> tuple[dict[str, Any], str]:
  """A client observation -> (Policy observation, instruction); VlaxError names the key."""
  if not isinstance(obs, Mapping):
    raise VlaxError(f"request must be a msgpack map of observation keys, got "
                    f"{type(obs).__name__}")
  missing = [k for k in key_map.keys if k not in obs and not (k in key_map.state_keys
                                                               and state_dim == 0)]
  if missing:
    raise VlaxError(f"observation lacks key(s) {missing}; this server expects "
                    f"{key_map.keys}")
  prompt = obs[key_map.prompt]
  if isinstance(prompt, np.ndarray) and prompt.ndim == 0:
    prompt = prompt.item()
  if isinstance(prompt, bytes):
    prompt = prompt.decode("utf-8", "replace")
  if not isinstance(prompt, str) or not prompt.strip():
    raise VlaxError(f"observation[{key_map.prompt!r}] must be a non-empty string")
  if len(prompt) > MAX_PROMPT_CHARS:  # before tokenizing
    raise VlaxError(f"observation[{key_map.prompt!r}] has {len(prompt)} characters; at "
                    f"most {MAX_PROMPT_CHARS}")
  out: dict[str, Any] = {f"image_{cam}": _image(obs[key], key)
                         for key, cam in key_map.images.items()}
  if key_map.state_keys and state_dim:
    parts = []
    for key in key_map.state_keys:
      part = obs[key]
      if isinstance(part, (int, float)) and not isinstance(part, bool):
        part = np.asarray([part], np.float64)  # a scalar (e.g. DROID's gripper)
      if not isinstance(part, np.ndarray) or part.dtype.kind not in "fiu":
        raise VlaxError(f"observation[{key!r}] must be a numeric array, got "
                        f"{getattr(part, 'dtype', type(part).__name__)}")
      parts.append(part.reshape(-1) if part.ndim <= 1 else part)
    state = parts[0] if len(parts) == 1 else np.concatenate(parts)
    name = key_map.state if isinstance(key_map.state, str) else "+".join(key_map.state)
    if state.shape != (state_dim,):
      raise VlaxError(f"observation[{name!r}] must have shape [{state_dim}], got "
                      f"{list(state.shape)}")
    out["proprio"] = state.astype(np.float32)
  return out, prompt


class OpenPIPolicyServer:
  """One policy (one dataset's action space) behind openpi's websocket protocol."""

  def __init__(self, policy, dataset: str | None = None, key_map: KeyMap | None = None,
               *, max_message_bytes: int = MAX_MESSAGE_BYTES,
               idle_timeout_s: float = IDLE_TIMEOUT_S, max_clients: int = MAX_CLIENTS,
               verbose: bool = False):
    self.policy = policy
    self.dataset = policy._resolve_dataset(dataset)  # pylint: disable=protected-access
    self.action_dim = policy.action_dim(self.dataset)
    self.state_dim = self._state_dim()
    self.key_map = key_map or KeyMap.libero(policy.cameras)
    self.max_message_bytes = int(max_message_bytes)
    self.idle_timeout_s = float(idle_timeout_s)
    self.max_clients = int(max_clients)
    self.verbose = verbose
    self._lock = threading.Lock()  # one model, one device: predictions in turn
    self._clients = 0
    self._clients_lock = threading.Lock()
    self._closed_errors: tuple[type[BaseException], ...] = ()  # set by make_server

  def _state_dim(self) -> int:
    if not self.policy.seq.proprio_bins:
      return 0
    st = self.policy.statistics[self.dataset].get("proprio")
    return len(st["mean"]) if isinstance(st, Mapping) and "mean" in st else 0

  def metadata(self) -> dict[str, Any]:
    return {"server": "vlax", "protocol": "openpi", "dataset": self.dataset,
            "action_dim": self.action_dim, "chunk_len": self.policy.chunk_len,
            "state_dim": self.state_dim, "observation_keys": self.key_map.keys,
            "key_map": {"images": dict(self.key_map.images),
                        "state": (self.key_map.state if isinstance(self.key_map.state, str)
                                  or self.key_map.state is None
                                  else list(self.key_map.state)),
                        "prompt": self.key_map.prompt},
            "cameras": list(self.policy.cameras), "max_prompt_chars": MAX_PROMPT_CHARS,
            "max_message_bytes": self.max_message_bytes}

  def infer(self, message: Any) -> dict[str, Any]:
    """One request (msgpack bytes) -> the reply dict; VlaxError for a bad request."""
    if not isinstance(message, bytes):
      raise VlaxError("requests must be binary msgpack frames, got a text frame")
    obs, prompt = to_policy_inputs(msgpack_arrays.unpackb(message), self.key_map,
                                   self.state_dim)
    start = time.perf_counter()
    with self._lock:
      actions = self.policy.predict_action(obs, prompt, dataset=self.dataset)
    infer_ms = 1000 * (time.perf_counter() - start)
    return {"actions": np.asarray(actions, np.float32),
            "server_timing": {"infer_ms": infer_ms},
            "decode_errors": self.policy.decode_errors}

  # --- websockets glue ----------------------------------------------------------------

  def _process_request(self, connection, request):
    if request.path.rstrip("/") == "/healthz":
      return connection.respond(http.HTTPStatus.OK, "OK\n")
    with self._clients_lock:
      if self._clients >= self.max_clients:
        return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE,
                                  f"at most {self.max_clients} clients at once\n")
    return None

  def _handle(self, conn) -> None:
    with self._clients_lock:
      self._clients += 1
    try:
      conn.send(msgpack_arrays.packb(self.metadata()))
      while True:
        try:
          message = conn.recv(timeout=self.idle_timeout_s)
        except TimeoutError:
          conn.close(1000, f"idle for {self.idle_timeout_s:g} s")
          return
        try:
          reply = self.infer(message)
        except VlaxError as e:
          self._fail(conn, f"error: {e}")
          return
        except Exception:  # pylint: disable=broad-except
          self._fail(conn, traceback.format_exc())
          return
        conn.send(msgpack_arrays.packb(reply))
    except self._closed_errors:
      return
    finally:
      with self._clients_lock:
        self._clients -= 1

  def _fail(self, conn, text: str) -> None:
    if self.verbose:
      print(f"openpi server: {text.strip().splitlines()[-1]}", flush=True)
    conn.send(text)
    conn.close(1011, "bad request" if text.startswith("error:") else "internal error")

  def make_server(self, host: str = "127.0.0.1", port: int = 8000):
    """A `websockets.sync.server.Server` bound to (host, port) (0 = any free port)."""
    # websockets is the [serve] extra's dependency: imported only when serving openpi.
    try:
      from websockets.exceptions import ConnectionClosed  # pylint: disable=g-import-not-at-top
      from websockets.sync.server import serve as ws_serve  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise VlaxError("--protocol openpi needs the 'websockets' package: pip install "
                      "'vlax[serve]'") from None
    self._closed_errors = (ConnectionClosed,)
    try:
      return ws_serve(self._handle, host, port, compression=None,
                      max_size=self.max_message_bytes, process_request=self._process_request,
                      open_timeout=10, close_timeout=5)
    except OSError as e:
      raise VlaxError(f"cannot listen on {host}:{port}: {e}") from None


def serve_openpi(checkpoint: str, host: str = "127.0.0.1", port: int = 8000,
                 step: int | None = None, dataset: str | None = None,
                 key_map_path: str | None = None, warmup: bool = True,
                 max_message_bytes: int = MAX_MESSAGE_BYTES,
                 idle_timeout_s: float = IDLE_TIMEOUT_S) -> None:
  """Loads the policy and serves openpi's protocol until interrupted (Ctrl-C)."""
  if not 0 <= int(port) <= 65535:
    raise VlaxError(f"--port must be in 0..65535, got {port}")
  if not max_message_bytes > 0 or not idle_timeout_s > 0:
    raise VlaxError(f"--max-message-mb and --idle-timeout must be > 0, got "
                    f"{max_message_bytes / (1 << 20):g} MiB and {idle_timeout_s:g} s")
  if key_map_path and not os.path.exists(key_map_path):
    raise VlaxError(f"key map file {key_map_path} does not exist")
  if dataset is None and not weights_lib.is_released(checkpoint):  # before loading
    keys = sorted(ckpt_format.read_metadata(checkpoint, step).get("statistics") or {})
    if len(keys) > 1:
      raise VlaxError(f"checkpoint {checkpoint} holds statistics of several datasets; "
                      f"choose one with --dataset from {keys}")
  policy = Policy(checkpoint, step, dataset)
  name = policy._resolve_dataset(dataset)  # pylint: disable=protected-access
  key_map = load_key_map(key_map_path, name, policy.cameras)
  app = OpenPIPolicyServer(policy, name, key_map, max_message_bytes=max_message_bytes,
                           idle_timeout_s=idle_timeout_s, verbose=True)
  if warmup:
    policy.warmup(1, name)
  server = app.make_server(host, port)
  h, p = server.socket.getsockname()[:2]
  print(f"serving {policy} for dataset {name!r} on ws://{h}:{p} (openpi protocol; keys "
        f"{key_map.keys}; GET /healthz)", flush=True)
  serve_until_stopped(server.serve_forever, server.shutdown)
