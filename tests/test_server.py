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

import test_policy as tp


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
