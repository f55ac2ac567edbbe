"""Offline eval metrics against hand-computed numpy, and the report/plot/table outputs."""

import json
import os

import numpy as np
import pytest

from vlax.errors import VlaxError
from vlax.evaluation import (ActionMetrics, format_table, run_offline_eval, summary_scalars,
                             token_accuracy_counts, write_report)

NAMES = ["robot_a", "robot_b"]
DIMS = {"robot_a": 3, "robot_b": 2}
GRIP = {"robot_a": [2]}
K, A = 2, 3
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _metrics(**kw):
  return ActionMetrics(NAMES, DIMS, K, GRIP, **kw)


def _random_batch(seed, b=6):
  """A batch with random values and masks; robot_b rows have mask True on their padded dim
  (dim 2) on purpose: the accumulator must ignore dims past a dataset's action dim."""
  rng = np.random.default_rng(seed)
  ds = rng.integers(0, 2, size=b)
  ds[:2] = [0, 1]
  batch = {
      "dataset_index": ds,
      "pred_norm": rng.normal(size=(b, K, A)),
      "true_norm": rng.normal(size=(b, K, A)),
      "pred_robot": rng.uniform(0, 1, size=(b, K, A)),
      "true_robot": rng.uniform(0, 1, size=(b, K, A)),
      "mask": rng.uniform(size=(b, K, A)) < 0.7,
      "token_correct": rng.integers(0, 4, size=b),
  }
  batch["token_total"] = batch["token_correct"] + rng.integers(0, 3, size=b)
  return batch


def _expected(batches, name):
  """Loop-by-loop reference for one dataset."""
  di, dim = NAMES.index(name), DIMS[name]
  ex = {k: np.zeros((K, dim)) for k in ("l1n", "mn", "l1r", "mr", "n")}
  g_ok = g_n = tc = tt = n_ex = 0
  for bt in batches:
    for b in range(len(bt["dataset_index"])):
      if bt["dataset_index"][b] != di:
        continue
      n_ex += 1
      tc += bt["token_correct"][b]
      tt += bt["token_total"][b]
      for k in range(K):
        for a in range(dim):
          if not bt["mask"][b, k, a]:
            continue
          en = bt["pred_norm"][b, k, a] - bt["true_norm"][b, k, a]
          er = bt["pred_robot"][b, k, a] - bt["true_robot"][b, k, a]
          ex["l1n"][k, a] += abs(en)
          ex["mn"][k, a] += en * en
          ex["l1r"][k, a] += abs(er)
          ex["mr"][k, a] += er * er
          ex["n"][k, a] += 1
          if a in GRIP.get(name, []):
            g_n += 1
            g_ok += (bt["pred_robot"][b, k, a] > 0.5) == (bt["true_robot"][b, k, a] > 0.5)
  return ex, g_ok, g_n, tc, tt, n_ex


def test_matches_hand_computed_per_dataset_dimension_and_chunk_position():
  batches = [_random_batch(0), _random_batch(1, b=5)]
  m = _metrics()
  for bt in batches:
    m.update(**bt)
  res = m.result()
  for name in NAMES:
    ex, g_ok, g_n, tc, tt, n_ex = _expected(batches, name)
    r = res["datasets"][name]
    assert r["num_examples"] == n_ex
    assert r["num_action_values"] == ex["n"].sum()
    assert r["token_accuracy"] == pytest.approx(tc / tt)
    assert r["l1_norm"] == pytest.approx(ex["l1n"].sum() / ex["n"].sum())
    assert r["mse_norm"] == pytest.approx(ex["mn"].sum() / ex["n"].sum())
    assert r["l1_robot"] == pytest.approx(ex["l1r"].sum() / ex["n"].sum())
    assert r["mse_robot"] == pytest.approx(ex["mr"].sum() / ex["n"].sum())
    assert r["rmse_norm"] == pytest.approx(np.sqrt(r["mse_norm"]))
    pd, pp = r["per_dimension"], r["per_chunk_position"]
    assert len(pd["l1_norm"]) == DIMS[name] and len(pp["l1_norm"]) == K
    np.testing.assert_allclose(pd["l1_norm"], ex["l1n"].sum(0) / ex["n"].sum(0))
    np.testing.assert_allclose(pd["mse_robot"], ex["mr"].sum(0) / ex["n"].sum(0))
    np.testing.assert_allclose(pp["l1_robot"], ex["l1r"].sum(1) / ex["n"].sum(1))
    np.testing.assert_allclose(pp["mse_norm"], ex["mn"].sum(1) / ex["n"].sum(1))
    assert pd["count"] == list(ex["n"].sum(0).astype(int))
    if name in GRIP:
      assert r["gripper_accuracy"] == pytest.approx(g_ok / g_n)
      assert r["num_gripper_values"] == g_n
    else:
      assert r["gripper_accuracy"] is None and r["num_gripper_values"] == 0
  # Overall pools every dataset's valid values.
  ex_all = [_expected(batches, n) for n in NAMES]
  n_all = sum(e[0]["n"].sum() for e in ex_all)
  assert res["overall"]["l1_norm"] == pytest.approx(
      sum(e[0]["l1n"].sum() for e in ex_all) / n_all)
  np.testing.assert_allclose(
      res["overall"]["per_chunk_position"]["mse_robot"],
      sum(e[0]["mr"].sum(1) for e in ex_all) / sum(e[0]["n"].sum(1) for e in ex_all))
  assert res["overall"]["token_accuracy"] == pytest.approx(
      sum(e[3] for e in ex_all) / sum(e[4] for e in ex_all))
  assert res["overall"]["num_examples"] == 11


def _assert_close_tree(x, y):
  """Equal structure and values up to float summation order."""
  if isinstance(x, dict):
    assert sorted(x) == sorted(y)
    for k in x:
      _assert_close_tree(x[k], y[k])
  elif isinstance(x, list):
    assert len(x) == len(y)
    for u, v in zip(x, y):
      _assert_close_tree(u, v)
  elif isinstance(x, float):
    assert x == pytest.approx(y, rel=1e-12)
  else:
    assert x == y


def test_streaming_equals_one_big_batch():
  a, b = _random_batch(3), _random_batch(4)
  m1, m2 = _metrics(), _metrics()
  m1.update(**a)
  m1.update(**b)
  m2.update(**{k: np.concatenate([a[k], b[k]]) for k in a})
  _assert_close_tree(m1.result(), m2.result())
  m1.reset()
  assert m1.result()["overall"]["num_examples"] == 0


def test_perfect_predictor_and_exact_shift():
  bt = _random_batch(5)
  bt["true_robot"] = np.where(bt["true_robot"] > 0.5, 1.0, 0.0)  # clean gripper targets
  perfect = dict(bt, pred_norm=bt["true_norm"], pred_robot=bt["true_robot"],
                 token_correct=bt["token_total"])
  m = _metrics()
  m.update(**perfect)
  r = m.result()
  for res in [*r["datasets"].values(), r["overall"]]:
    assert res["l1_norm"] == 0 and res["mse_norm"] == 0 and res["l1_robot"] == 0
    assert res["token_accuracy"] == 1.0
  assert r["datasets"]["robot_a"]["gripper_accuracy"] == 1.0
  # A constant shift gives exactly that error; 0.25 keeps 0/1 grippers on the right side.
  shifted = dict(perfect, pred_norm=bt["true_norm"] + 0.5, pred_robot=bt["true_robot"] - 0.25)
  m = _metrics()
  m.update(**shifted)
  r = m.result()
  for res in [*r["datasets"].values(), r["overall"]]:
    assert res["l1_norm"] == pytest.approx(0.5) and res["mse_norm"] == pytest.approx(0.25)
    assert res["l1_robot"] == pytest.approx(0.25)
    assert res["mse_robot"] == pytest.approx(0.0625)
    assert all(v is None or v == pytest.approx(0.5) for v in res["per_chunk_position"]["l1_norm"])
  assert r["datasets"]["robot_a"]["gripper_accuracy"] == 1.0
  # Shifting by more than the threshold flips every gripper: accuracy 0.
  m = _metrics()
  m.update(**dict(perfect, pred_robot=1.0 - bt["true_robot"]))
  assert m.result()["datasets"]["robot_a"]["gripper_accuracy"] == 0.0


def test_masking_padded_dims_and_steps_by_hand():
  # One robot_b example (dim 2): dim 2 is padding (huge error, mask True on purpose must
  # still be ignored); chunk step 1 is past the episode end (mask False).
  true = np.zeros((1, K, A))
  pred = np.array([[[0.1, -0.3, 100.0], [9.0, 9.0, 9.0]]])
  mask = np.array([[[True, True, True], [False, False, False]]])
  m = _metrics()
  m.update([1], pred, true, pred * 2, true, mask, [3], [4])
  r = m.result()["datasets"]["robot_b"]
  assert r["num_action_values"] == 2
  assert r["l1_norm"] == pytest.approx(0.2)
  assert r["mse_norm"] == pytest.approx((0.01 + 0.09) / 2)
  assert r["l1_robot"] == pytest.approx(0.4)
  assert r["per_dimension"]["l1_norm"] == pytest.approx([0.1, 0.3])
  assert r["per_chunk_position"]["l1_norm"][0] == pytest.approx(0.2)
  assert r["per_chunk_position"]["l1_norm"][1] is None
  assert r["per_chunk_position"]["count"] == [2, 0]
  assert r["token_accuracy"] == 0.75
  # robot_a saw nothing: counts are zero, metrics null.
  ra = m.result()["datasets"]["robot_a"]
  assert ra["num_examples"] == 0 and ra["l1_norm"] is None and ra["token_accuracy"] is None


def test_gripper_accuracy_by_hand():
  # robot_a gripper is dim 2; threshold 0.5 in robot units (1 = open).
  true_r = np.zeros((1, K, A))
  pred_r = np.zeros((1, K, A))
  true_r[0, :, 2] = [1.0, 0.0]
  pred_r[0, :, 2] = [0.7, 0.6]  # step 0 right (open), step 1 wrong
  mask = np.ones((1, K, A), bool)
  m = _metrics()
  m.update([0], pred_r, true_r, pred_r, true_r, mask, [0], [0])
  r = m.result()["datasets"]["robot_a"]
  assert r["gripper_accuracy"] == 0.5
  assert r["per_chunk_position"]["gripper_accuracy"] == [1.0, 0.0]
  assert r["per_dimension"]["gripper_accuracy"] == [None, None, 0.5]
  assert r["token_accuracy"] is None  # no action tokens scored


def test_token_accuracy_counts():
  pred = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
  tgt = np.array([[1, 0, 3, 4], [5, 6, 0, 0]])
  mask = np.array([[False, True, True, True], [True, True, True, False]])
  c, t = token_accuracy_counts(pred, tgt, mask)
  assert c.tolist() == [2, 2] and t.tolist() == [3, 3]


def test_bad_inputs_name_the_culprit():
  bt = _random_batch(0)
  m = _metrics()
  with pytest.raises(VlaxError, match="true_robot"):
    m.update(**dict(bt, true_robot=bt["true_robot"][:, :, :2]))
  with pytest.raises(VlaxError, match="dataset_index 7"):
    m.update(**dict(bt, dataset_index=np.full(6, 7)))
  with pytest.raises(VlaxError, match="chunk_len=2"):
    m.update(**{k: (v[:, :1] if np.ndim(v) == 3 else v) for k, v in bt.items()})
  with pytest.raises(VlaxError, match="non-finite.*robot_"):
    m.update(**dict(bt, pred_norm=np.full((6, K, A), np.nan), mask=np.ones((6, K, A), bool)))
  with pytest.raises(VlaxError, match="robot_c"):
    ActionMetrics(NAMES, {**DIMS, "robot_c": 4}, K)
  with pytest.raises(VlaxError, match="robot_a.*gripper_dims"):
    ActionMetrics(NAMES, DIMS, K, {"robot_a": [3]})
  with pytest.raises(VlaxError, match="robot_b"):
    ActionMetrics(NAMES, {"robot_a": 3}, K)


def test_episode_buffer_is_bounded_and_sorted():
  m = _metrics(max_plot_episodes=2, max_plot_steps=3)
  rng = np.random.default_rng(0)
  # 5 episodes of robot_a, 4 steps each, arriving in shuffled order.
  ep = np.repeat(np.arange(5), 4)
  t = np.tile(np.arange(4), 5)
  order = rng.permutation(20)
  ep, t = ep[order], t[order]
  true = np.zeros((20, K, A))
  true[:, 0, 0] = t  # the first dim's truth is the timestep itself
  mask = np.ones((20, K, A), bool)
  for sl in (slice(0, 10), slice(10, 20)):
    m.update(np.zeros(10, int), true[sl], true[sl], true[sl], true[sl], mask[sl],
             np.zeros(10, int), np.zeros(10, int), episode_id=ep[sl], timestep=t[sl])
  data = m.plot_data()
  eps = data["robot_a"]["episodes"]
  assert len(eps) == 2 and data["robot_b"]["episodes"] == []
  assert [e["episode_id"] for e in eps] == [str(ep[0]), str(next(x for x in ep if x != ep[0]))]
  for e in eps:
    assert len(e["timestep"]) == 3  # max_plot_steps
    assert list(e["timestep"]) == sorted(e["timestep"])
    np.testing.assert_array_equal(e["true_robot"][:, 0], e["timestep"])
    assert e["pred_norm"].shape == (3, 3) and e["mask"].dtype == bool


def _filled_metrics():
  m = _metrics(max_plot_episodes=2)
  rng = np.random.default_rng(1)
  for step in range(3):
    bt = _random_batch(10 + step)
    b = len(bt["dataset_index"])
    bt["episode_id"] = np.array([f"ep{i % 3}".encode() for i in range(b)])
    bt["timestep"] = np.full(b, step) + rng.integers(0, 2, size=b)
    m.update(**bt)
  return m


def test_write_report_json_and_pngs(tmp_path):
  m = _filled_metrics()
  out = write_report(m.result(), str(tmp_path / "out"), m.plot_data(),
                     metadata={"checkpoint": "ckpt", "step": 7})
  with open(out["report_path"]) as f:
    report = json.load(f)
  assert out["report_path"] == str(tmp_path / "out" / "report.json")
  assert report["format"] == "vlax-eval/1"
  assert report["metadata"] == {"checkpoint": "ckpt", "step": 7}
  assert set(report["datasets"]) == set(NAMES)
  for key in ("token_accuracy", "l1_norm", "mse_norm", "l1_robot", "mse_robot",
              "gripper_accuracy", "per_dimension", "per_chunk_position", "num_examples"):
    assert key in report["datasets"]["robot_a"]
    assert key in report["overall"] or key == "per_dimension"
  names = sorted(report["plots"])
  assert "error_by_chunk_position.png" in names
  assert {"error_by_dim_robot_a.png", "error_by_dim_robot_b.png"} <= set(names)
  assert sum(n.startswith("timeseries_robot_a_") for n in names) == 2
  assert sum(n.startswith("timeseries_robot_b_") for n in names) == 2
  assert len(out["plot_paths"]) == len(names)
  for p in out["plot_paths"]:
    with open(p, "rb") as f:
      data = f.read()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5000, p


def test_format_table_and_summary_scalars():
  m = _filled_metrics()
  res = m.result()
  table = format_table(res)
  lines = table.splitlines()
  assert lines[0].split()[:2] == ["dataset", "n"]
  for name in NAMES + ["overall"]:
    assert any(line.startswith(name) for line in lines)
  assert len({len(line) for line in lines}) == 1  # fixed width
  a_row = next(line for line in lines if line.startswith("robot_a"))
  assert f"{res['datasets']['robot_a']['l1_norm']:.4f}" in a_row
  b_row = next(line for line in lines if line.startswith("robot_b"))
  assert b_row.split()[-1] == "-"  # robot_b has no gripper
  s = summary_scalars(res)
  assert s["eval/robot_a/l1_norm"] == res["datasets"]["robot_a"]["l1_norm"]
  assert "eval/robot_b/gripper_accuracy" not in s and "eval/overall/token_accuracy" in s


def test_run_offline_eval_driver(tmp_path, capsys):
  batches = [_random_batch(s) for s in range(4)]
  res = run_offline_eval(iter(batches), _metrics(), out_dir=str(tmp_path), max_batches=2)
  assert res["num_batches"] == 2
  assert res["overall"]["num_examples"] == 12
  assert os.path.exists(tmp_path / "report.json")
  assert "robot_a" in capsys.readouterr().out
  with pytest.raises(VlaxError, match="no evaluation batches"):
    run_offline_eval([], _metrics(), print_fn=None)
