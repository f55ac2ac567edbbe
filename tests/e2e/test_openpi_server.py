"""`vlax serve --protocol openpi`, driven by openpi's own client (openpi-client, installed
without its numpy<2 pin: `pip install --no-deps openpi-client msgpack websockets dm-tree`)."""

import importlib
import json
import os
import re
import subprocess
import sys
import threading
import urllib.request

import msgpack
import numpy as np
import pytest

from vlax.errors import VlaxError
from vlax.inference import msgpack_arrays
from vlax.inference import openpi_server
from vlax.inference.policy import Policy

import _policy_utils as tp


def _need(module):
  """Skipped where openpi-client is not installed, but an error in CI (.ci/run installs it)."""
  return importlib.import_module(module) if os.environ.get("CI") else (
      pytest.importorskip(module))


action_chunk_broker = _need("openpi_client.action_chunk_broker")
websocket_client_policy = _need("openpi_client.websocket_client_policy")
ws_client = _need("websockets.sync.client")
ws_exceptions = _need("websockets.exceptions")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _start(app):
  srv = app.make_server("127.0.0.1", 0)
  thread = threading.Thread(target=srv.serve_forever, daemon=True)
  thread.start()
  return srv, thread, srv.socket.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  path = tp.make_checkpoint(tmp_path_factory.mktemp("openpi") / "ckpt")
  policy = Policy(os.path.dirname(path), dataset="robot_a")
  app = openpi_server.OpenPIPolicyServer(policy, "robot_a")
  srv, thread, port = _start(app)
  try:
    yield policy, app, port
  finally:
    srv.shutdown()
    thread.join(timeout=10)


def _libero_obs(seed, prompt="pick up the red block"):
  o = tp.make_observation(seed, size=(64, 48))
  return {"observation/image": o["image_primary"], "observation/wrist_image": o["image_wrist"],
          "observation/state": o["proprio"], "prompt": prompt}


def _expected(policy, obs):
  return policy.predict_action({"image_primary": obs["observation/image"],
                                "image_wrist": obs["observation/wrist_image"],
                                "proprio": obs["observation/state"]}, obs["prompt"],
                               dataset="robot_a")


def _raw_request(port, payload):
  """Sends one frame with a bare websocket client; returns (reply, close code)."""
  reply = None
  with ws_client.connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None) as ws:
    msgpack_arrays.unpackb(ws.recv(timeout=30))  # metadata
    try:
      ws.send(payload)
      reply = ws.recv(timeout=60)
      ws.recv(timeout=30)  # the server closes after an error frame
    except ws_exceptions.ConnectionClosed as e:
      return reply, e.rcvd.code if e.rcvd else None
  return reply, None


def test_metadata_and_infer_match_policy(served):
  policy, _, port = served
  client = websocket_client_policy.WebsocketClientPolicy(host="127.0.0.1", port=port)
  meta = client.get_server_metadata()
  assert meta["dataset"] == "robot_a" and meta["action_dim"] == 3
  assert meta["chunk_len"] == tp.K and meta["state_dim"] == 2
  assert meta["observation_keys"] == ["observation/image", "observation/wrist_image",
                                      "observation/state", "prompt"]
  obs = _libero_obs(1)
  out = client.infer(obs)
  assert out["actions"].shape == (tp.K, 3) and out["actions"].dtype == np.float32
  np.testing.assert_allclose(out["actions"], _expected(policy, obs), rtol=1e-6)
  # [3, H, W] images (as some openpi clients send) give the same answer.
  chw = dict(obs, **{"observation/image": np.transpose(obs["observation/image"], (2, 0, 1))})
  np.testing.assert_allclose(client.infer(chw)["actions"], out["actions"], rtol=1e-6)


def test_action_chunk_broker_hands_out_one_step_at_a_time(served):
  policy, _, port = served
  client = websocket_client_policy.WebsocketClientPolicy(host="127.0.0.1", port=port)
  calls = []
  infer = client.infer
  client.infer = lambda obs: calls.append(1) or infer(obs)
  broker = action_chunk_broker.ActionChunkBroker(client, action_horizon=tp.K)
  steps = [broker.infer(_libero_obs(2 + i // tp.K)) for i in range(2 * tp.K)]
  assert len(calls) == 2
  for chunk_i in range(2):
    want = _expected(policy, _libero_obs(2 + chunk_i))
    for j in range(tp.K):
      np.testing.assert_allclose(steps[chunk_i * tp.K + j]["actions"], want[j], rtol=1e-6)


def test_bad_requests_get_error_frame_and_server_keeps_serving(served):
  policy, _, port = served
  good = _libero_obs(3)
  cases = [
      ({k: v for k, v in good.items() if k != "observation/wrist_image"},
       "lacks key(s) ['observation/wrist_image']"),
      (dict(good, **{"observation/image": np.zeros((8, 8), np.uint8)}), "[H, W, 3]"),
      (dict(good, **{"observation/image": good["observation/image"].astype(np.float32)}),
       "must be uint8"),
      (dict(good, **{"observation/state": np.zeros(5, np.float32)}), "shape [2]"),
      (dict(good, prompt=""), "non-empty string"),
      (dict(good, prompt="x" * (openpi_server.MAX_PROMPT_CHARS + 1)), "characters"),
  ]
  for obs, msg in cases:
    client = websocket_client_policy.WebsocketClientPolicy(host="127.0.0.1", port=port)
    with pytest.raises(RuntimeError, match="Error in inference server") as e:
      client.infer(obs)
    assert msg in str(e.value), str(e.value)
  # Not msgpack; a text frame; an array whose bytes do not fill its shape; an object dtype.
  bad_array = {"__ndarray__": True, "data": b"\0" * 5, "dtype": "<f4", "shape": [2]}
  for payload, msg in [(b"\xc1 not msgpack", "not a msgpack message"),
                       ("hello", "binary msgpack"),
                       (msgpack.packb(dict(good, **{"observation/state": bad_array}),
                                      default=msgpack_arrays._encode), "needs 8 bytes"),
                       (msgpack.packb({"x": {"__ndarray__": True, "data": b"", "dtype": "|O",
                                             "shape": [0]}}), "not allowed"),
                       (msgpack.packb({"x": {"__ndarray__": True, "data": b"", "dtype": "<f4",
                                             "shape": [-1, 0]}}), "non-negative")]:
    reply, code = _raw_request(port, payload)
    assert isinstance(reply, str) and msg in reply, reply
    assert code == 1011
  # Still serving, with the right answer.
  client = websocket_client_policy.WebsocketClientPolicy(host="127.0.0.1", port=port)
  np.testing.assert_allclose(client.infer(good)["actions"], _expected(policy, good), rtol=1e-6)


def test_two_clients_at_once(served):
  policy, _, port = served
  results, errors = {}, []

  def run(name, seed):
    try:
      client = websocket_client_policy.WebsocketClientPolicy(host="127.0.0.1", port=port)
      results[name] = [client.infer(_libero_obs(seed + i))["actions"] for i in range(3)]
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=run, args=(n, s)) for n, s in (("a", 10), ("b", 20))]
  for t in threads:
    t.start()
  # A bad client in the middle does not disturb them.
  assert _raw_request(port, b"garbage")[1] == 1011
  for t in threads:
    t.join(timeout=120)
  assert not errors, errors
  for name, seed in (("a", 10), ("b", 20)):
    for i in range(3):
      np.testing.assert_allclose(results[name][i], _expected(policy, _libero_obs(seed + i)),
                                 rtol=1e-6)


def test_healthz_and_limits(served):
  policy, _, port = served
  with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as r:
    assert r.status == 200
  # Over the message cap: websockets closes (1009) before anything is unpacked.
  app = openpi_server.OpenPIPolicyServer(policy, "robot_a", max_message_bytes=1000,
                                         idle_timeout_s=0.5)
  srv, thread, small_port = _start(app)
  try:
    _, code = _raw_request(small_port, b"\0" * 2000)
    assert code == 1009
    # Idle connections are closed after idle_timeout_s.
    with ws_client.connect(f"ws://127.0.0.1:{small_port}", compression=None) as ws:
      ws.recv(timeout=30)
      with pytest.raises(ws_exceptions.ConnectionClosed):
        ws.recv(timeout=30)
  finally:
    srv.shutdown()
    thread.join(timeout=10)


def test_key_maps(tmp_path):
  cams = ("primary", "wrist")
  assert openpi_server.load_key_map(None, "x", cams).keys == [
      "observation/image", "observation/wrist_image", "observation/state", "prompt"]
  f = tmp_path / "keys.json"
  f.write_text(json.dumps({"robot_a": {"images": {"cam_high": "primary"}, "state": "state",
                                       "prompt": "task"}}))
  km = openpi_server.load_key_map(str(f), "robot_a", cams)
  assert km.keys == ["cam_high", "state", "task"]
  with pytest.raises(VlaxError, match="none for dataset 'robot_b'"):
    openpi_server.load_key_map(str(f), "robot_b", cams)
  f.write_text(json.dumps({"images": {"cam_high": "top"}}))
  with pytest.raises(VlaxError, match=r"camera\(s\) \['top'\]"):
    openpi_server.load_key_map(str(f), "robot_a", cams)


def test_cli_serves_an_export_bundle(tmp_path):
  from vlax.inference.export import export  # pylint: disable=g-import-not-at-top
  ckpt = tp.make_checkpoint(tmp_path / "ckpt")
  export(os.path.dirname(ckpt), str(tmp_path / "bundle"))
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  proc = subprocess.Popen(
      [sys.executable, "-m", "vlax.cli", "serve", str(tmp_path / "bundle"), "--protocol",
       "openpi", "--port", "0", "--dataset", "robot_b", "--no-warmup"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    line = proc.stdout.readline()
    m = re.search(r"ws://127\.0\.0\.1:(\d+)", line)
    assert m, line + proc.stdout.read() if proc.poll() is not None else line
    client = websocket_client_policy.WebsocketClientPolicy(host="127.0.0.1",
                                                           port=int(m.group(1)))
    assert client.get_server_metadata()["action_dim"] == 4
    obs = _libero_obs(5)
    obs["observation/state"] = np.zeros(4, np.float32)
    assert client.infer(obs)["actions"].shape == (tp.K, 4)
  finally:
    proc.terminate()
    proc.wait(timeout=30)


def test_cli_argument_errors(tmp_path, capsys):
  from vlax import cli  # pylint: disable=g-import-not-at-top
  for args, msg in [(["--protocol", "openpi", "--port", "99999"], "--port must be in"),
                    (["--protocol", "openpi", "--idle-timeout", "0"], "must be > 0"),
                    (["--protocol", "openpi", "--key-map", str(tmp_path / "no.json")],
                     "key map file"),
                    (["--key-map", "k.json"], "--key-map is for --protocol openpi")]:
    assert cli.main(["serve", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1, err
