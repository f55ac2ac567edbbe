"""Vision probe: the ridge / R^2 / episode-split arithmetic on synthetic features, and the
probe's report from a tiny random tower with the demo reader replaced (no TF, no sim)."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from vlax.errors import VlaxError
from vlax.evaluation import vision_probe as vp


def _data(n_eps=20, per=15, d=12, noise=0.0, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n_eps * per, d))
  w = rng.normal(size=(d, 3))
  y = x @ w + 0.5 + noise * rng.normal(size=(len(x), 3))
  return x, y, np.repeat(np.arange(n_eps), per)


def test_ridge_recovers_a_linear_map():
  x, y, ids = _data()
  r = vp.probe(x, y, ids, seed=1)
  assert r["r2"] > 0.999 and min(r["r2_per_dim"]) > 0.999
  assert r["test_episodes"] == 4 and r["train_frames"] + r["test_frames"] == len(x)
  assert r["alpha"] <= 1.0  # no noise: little shrinkage wins


def test_noise_features_give_no_r2():
  x, _, ids = _data(d=8)
  y = np.random.default_rng(5).normal(size=(len(x), 3))
  r = vp.probe(x, y, ids)
  assert -0.2 < r["r2"] < 0.1


def test_dual_form_matches_primal():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(10, 30)), rng.normal(size=(10, 2))  # D > N: the dual system
  a = vp.ridge_fit(x, y, 3.0)
  z = (x - a[1]) / a[2]
  w = np.linalg.solve(z.T @ z + 3.0 * np.eye(30), z.T @ (y - y.mean(0)))
  np.testing.assert_allclose(a[0], w, atol=1e-8)


def test_r2_and_split_edge_cases():
  y = np.stack([np.arange(5.0), np.ones(5)], 1)  # the second dim is constant
  total, per = vp.r2_score(y, y)
  assert total == 1.0 and per[0] == 1.0 and np.isnan(per[1])
  first, second = vp.split_episodes(np.array([0, 0, 1, 1, 2]), 0.2, 0)
  assert second.sum() in (1, 2) and (first ^ second).all()
  with pytest.raises(VlaxError, match="at least 2 episodes"):
    vp.split_episodes(np.zeros(4), 0.5, 0)
  with pytest.raises(VlaxError, match="feature rows"):
    vp.probe(np.zeros((3, 2)), np.zeros((4, 3)), np.zeros(3))


def test_run_probe_on_a_tiny_checkpoint(tmp_path, monkeypatch):
  from vlax.models.config import VLAConfig
  from vlax.models.presets import get_preset
  cfg = get_preset("debug").to_dict()
  cfg["vision"].update(image_size=16, patch_size=8, depth=1, width=16, mlp_dim=32,
                       num_heads=2)
  config = VLAConfig.from_dict(cfg)
  init = vp._tower_fns(vp._key(config))[0]  # pylint: disable=protected-access
  shapes = jax.eval_shape(init, jax.random.PRNGKey(0))

  def cheap_params(config, seed=0):  # compiling the real init takes seconds: not needed here
    del config
    r = np.random.default_rng(seed)
    return jax.tree.map(lambda x: (0.2 * r.normal(size=x.shape)).astype(np.float32), shapes)

  monkeypatch.setattr(vp, "random_vision_params", cheap_params)
  params = {"img": cheap_params(config, seed=3)}
  meta = {"model": config.to_dict(), "step": 7,
          "action_tokenizer": {"sequence": {"cameras": ["primary", "wrist"]}}}
  monkeypatch.setattr(vp.weights_lib, "load", lambda path, step: (params, meta))
  rng = np.random.default_rng(0)

  def fake_frames(data_dir, task, cameras, *, max_episodes, frame_stride):
    del data_dir, task, max_episodes, frame_stride
    n = 60
    state = rng.normal(size=(n, 39)).astype(np.float32)
    return {"images": {c: rng.integers(0, 255, (n, 20, 20, 3), np.uint8) for c in cameras},
            "full_state": state, "episode_ids": np.repeat(np.arange(10), 6),
            "step_index": np.tile(np.arange(6) * 2, 10)}

  out = str(tmp_path / "probe")
  ckpt = tmp_path / "ckpt"
  ckpt.mkdir()
  report = vp.run_probe(str(ckpt), "/nowhere", "push,pick-place", out, load_fn=fake_frames,
                        print_fn=None)
  with open(os.path.join(out, "report.json")) as f:
    on_disk = json.load(f)
  assert set(on_disk["tasks"]) == {"push-v3", "pick-place-v3"}
  res = on_disk["tasks"]["push-v3"]
  assert set(res) == {"trained", "random"}
  assert set(res["trained"]) == {"primary", "wrist", "all"}
  assert set(res["trained"]["all"]) == {*vp.TARGETS, vp.START_TARGET}
  assert res["trained"]["all"][vp.START_TARGET]["test_frames"] == 2  # first frames only
  assert on_disk["metadata"]["data"]["push-v3"] == {"frames": 60, "episodes": 10}
  assert report["summary"]["random"]["primary"]["object_pos"] is not None
  assert vp.format_table(report).count("\n") == 2 * 2 * 3  # header + tasks x towers x sets


def test_cli_bad_input_is_one_line(tmp_path, capsys):
  from vlax import cli
  rc = cli.main(["vision-probe", "--checkpoint", str(tmp_path / "none"), "--data-dir", "/d",
                 "--tasks", "push", "--out", str(tmp_path / "o")])
  assert rc == 2 and "checkpoint not found" in capsys.readouterr().err
  rc = cli.main(["vision-probe", "--checkpoint", str(tmp_path), "--data-dir", "/d",
                 "--tasks", "push", "--out", str(tmp_path / "o"), "--frame-stride", "0"])
  assert rc == 2 and "--frame-stride" in capsys.readouterr().err
