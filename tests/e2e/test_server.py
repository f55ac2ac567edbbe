"""`vlax serve`: JSON over HTTP on localhost, round trip and input validation."""

import json
import os
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from vlax.inference import server as server_lib
from vlax.inference.policy import Policy

import _policy_utils as tp


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  path = tp.make_checkpoint(tmp_path_factory.mktemp("server") / "ckpt")
  policy = Policy(os.path.dirname(path), dataset="robot_a")
  srv = server_lib.make_server(policy, "127.0.0.1", 0)
  thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                            daemon=True)
  thread.start()
  host, port = srv.server_address[:2]
  try:
    yield policy, f"http://{host}:{port}"
  finally:
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


def _call(url, payload=None, raw=None):
  data = raw if raw is not None else (None if payload is None
                                      else json.dumps(payload).encode())
  req = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                               headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(req, timeout=60) as r:
      return r.status, json.loads(r.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def _request(obs, raw=True, **extra):
  body = {"instruction": "pick up the red block",
          "observation": {"image_primary": server_lib.encode_image(obs["image_primary"], raw),
                          "image_wrist": server_lib.encode_image(obs["image_wrist"], raw),
                          "proprio": obs["proprio"].tolist()}}
  body.update(extra)
  return body


def test_health(served):
  _, url = served
  status, out = _call(url + "/health")
  assert status == 200 and out["status"] == "ok"
  assert out["datasets"] == ["robot_a", "robot_b", "robot_c"]
  assert out["cameras"] == ["primary", "wrist"]
  assert out["action_dims"] == {"robot_a": 3, "robot_b": 4, "robot_c": 3}


@pytest.mark.parametrize("raw", [True, False])
def test_act_round_trip(served, raw):
  policy, url = served
  obs = tp.make_observation(11, size=(40, 52))
  status, out = _call(url + "/act", _request(obs, raw, return_tokens=True))
  assert status == 200, out
  want, tokens = policy.predict_action(obs, "pick up the red block", return_tokens=True)
  np.testing.assert_allclose(np.asarray(out["actions"]), want, rtol=1e-6)
  assert out["tokens"] == tokens.tolist()
  assert out["dataset"] == "robot_a" and out["action_dim"] == 3 and out["chunk_len"] == tp.K
  # Another dataset key gives that robot's action space.
  obs_b = tp.make_observation(11, size=(40, 52), proprio_dim=4)
  status, out = _call(url + "/act", _request(obs_b, raw, dataset="robot_b"))
  assert status == 200 and np.asarray(out["actions"]).shape == (tp.K, 4)


def test_bad_requests_get_400_with_message(served):
  _, url = served
  obs = tp.make_observation(12)
  good = _request(obs)
  cases = [
      ({**good, "instruction": ""}, "instruction"),
      ({**good, "dataset": "robot_z"}, "unknown dataset key 'robot_z'"),
      ({**good, "colour": 1}, "unknown request field"),
      ({**good, "observation": {**good["observation"], "image_top": None}},
       "unknown camera 'top'"),
      ({**good, "observation": {**good["observation"], "image_primary": "not base64!"}},
       "image_primary.*base64"),
      ({**good, "observation": {**good["observation"],
                                "image_primary": {"b64": "AAAA", "shape": [4, 4, 3]}}},
       "do not fill shape"),
      ({**good, "observation": {k: v for k, v in good["observation"].items()
                                if k != "proprio"}}, "no 'proprio'"),
  ]
  cases += [  # issue 24: a lone surrogate (valid JSON) was a 500; "false" read as true
      ({**good, "instruction": "pick \ud800 up"}, "not valid Unicode text"),
      ({**good, "instruction": " \t"}, "non-empty string"),
      ({**good, "return_tokens": "false"}, "'return_tokens' must be true or false"),
      ({**good, "return_tokens": 1}, "'return_tokens' must be true or false"),
      ({**good, "observation": {**good["observation"], "image_wrist_mask": "false"}},
       "['image_wrist_mask'] must be true or false"),
  ]
  for body, msg in cases:
    status, out = _call(url + "/act", body)
    assert status == 400, (body.keys(), out)
    assert msg.split(".*")[0] in out["error"], out
  status, out = _call(url + "/act", raw=b"{not json")
  assert status == 400 and "not JSON" in out["error"]
  status, out = _call(url + "/nowhere", good)
  assert status == 404
  # Still serving after the errors.
  assert _call(url + "/act", good)[0] == 200


def test_limits_are_checked_before_any_decoding(served, monkeypatch):
  policy, url = served
  obs = tp.make_observation(12)
  good = _request(obs)

  def must_not_run(*args, **kwargs):
    raise AssertionError("predict_action reached with an over-limit request")

  monkeypatch.setattr(policy, "predict_action", must_not_run)
  obs_in = good["observation"]
  cases = [
      ({**good, "instruction": "x" * (server_lib.MAX_INSTRUCTION_CHARS + 1)}, "characters"),
      ({**good, "observation": {**obs_in, "image_primary": {"b64": "AAAA",
                                                           "shape": [-2, -2, 3]}}}, "[H, W, 3]"),
      ({**good, "observation": {**obs_in, "image_primary": {"b64": "AAAA",
                                                           "shape": [1, 1, 1, 3]}}}, "[H, W, 3]"),
      ({**good, "observation": {**obs_in, "image_primary": {"b64": "AAAA",
                                                           "shape": "4,4,3"}}}, "[H, W, 3]"),
      ({**good, "observation": {**obs_in, "image_primary": {"b64": "A" * 400,
                                                           "shape": [2, 2, 3]}}}, "longer"),
      ({**good, "observation": {**obs_in, "proprio": [[1.0, 2.0]]}}, "flat list"),
      ({**good, "observation": {**obs_in, "proprio": [0.0] * 5000}}, "flat list"),
      ({**good, "observation": {f"image_{i}": None for i in range(100)}}, "entries"),
  ]
  for body, msg in cases:
    status, out = _call(url + "/act", body)
    assert status == 400 and msg in out["error"], (status, out)
  # Over the body cap: 413 before reading it.
  req = urllib.request.Request(url + "/act", data=b"{}", method="POST", headers={
      "Content-Type": "application/json",
      "Content-Length": str(server_lib.MAX_BODY_BYTES + 1)})
  with pytest.raises(urllib.error.HTTPError) as e:
    urllib.request.urlopen(req, timeout=60)
  assert e.value.code == 413
  # Not JSON by Content-Type (a cross-site form post): 415.
  req = urllib.request.Request(url + "/act", data=json.dumps(good).encode(), method="POST",
                               headers={"Content-Type": "text/plain"})
  with pytest.raises(urllib.error.HTTPError) as e:
    urllib.request.urlopen(req, timeout=60)
  assert e.value.code == 415


def test_a_stalled_client_is_dropped_and_others_are_served(served):
  import socket  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  policy, _ = served
  srv = server_lib.make_server(policy, "127.0.0.1", 0, read_timeout=0.5)
  thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                            daemon=True)
  thread.start()
  host, port = srv.server_address[:2]
  try:
    stalled = socket.create_connection((host, port), timeout=30)
    stalled.sendall(b"POST /act HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000\r\n\r\n{\"instr")
    start = time.time()
    assert _call(f"http://{host}:{port}/health")[0] == 200  # not blocked by it
    assert stalled.recv(1024) == b""  # the server hung up on it
    assert time.time() - start < 20
    stalled.close()
  finally:
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


def test_port_out_of_range_is_a_one_line_error():
  from vlax.errors import VlaxError  # pylint: disable=g-import-not-at-top
  with pytest.raises(VlaxError, match="0..65535"):
    server_lib.serve("/nonexistent", port=99999)
