"""The vlax checkpoint format: Orbax step dirs + JSON metadata."""

import logging

import jax
import numpy as np
import pytest

from vlax.checkpoints import format as ckpt_format
from vlax.errors import VlaxError


def _params(scale=1.0):
  return {"img": {"head": {"kernel": np.full((3, 8), scale, np.float32),
                           "bias": np.arange(8, dtype=np.float32) * scale}},
          "llm": {"final_norm": {"scale": np.ones((4,), np.float32) * scale}}}


META = {"model": {"vision": {"width": 3}, "llm": {"width": 4}},
        "statistics": {"toy": {"action": {"mean": [0.5]}}}}


def _assert_tree_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), y)


def test_round_trip_and_latest_step(tmp_path):
  root = str(tmp_path / "ckpt")
  assert ckpt_format.latest_step(root) is None
  step_dir = ckpt_format.save_checkpoint(root, 10, _params(1.0), META)
  assert step_dir.endswith("/10")
  ckpt_format.save_checkpoint(root, 20, _params(2.0), META)
  assert ckpt_format.latest_step(root) == 20
  assert ckpt_format.all_steps(root) == [10, 20]

  params, meta = ckpt_format.load_params(root)
  _assert_tree_equal(params, _params(2.0))
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(params))
  assert meta["format"] == ckpt_format.FORMAT and meta["step"] == 20
  assert meta["model"] == META["model"] and meta["statistics"] == META["statistics"]
  for key in ckpt_format.METADATA_KEYS:
    assert key in meta

  params, meta = ckpt_format.load_params(step_dir)  # a step directory
  _assert_tree_equal(params, _params(1.0))
  assert meta["step"] == 10
  params, _ = ckpt_format.load_params(root, step=10)
  _assert_tree_equal(params, _params(1.0))
  assert ckpt_format.read_metadata(step_dir)["step"] == 10
  assert ckpt_format.latest_step(step_dir) == 20


def test_restore_onto_shardings(tmp_path):
  root = str(tmp_path / "ckpt")
  ckpt_format.save_checkpoint(root, 1, _params(3.0), META)
  mesh = jax.make_mesh((len(jax.devices()),), ("fsdp",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  params, _ = ckpt_format.load_params(root, shardings=replicated)
  for x in jax.tree.leaves(params):
    assert isinstance(x, jax.Array) and x.sharding == replicated
  _assert_tree_equal(params, _params(3.0))
  if 8 % len(jax.devices()) == 0:  # conftest gives 8 CPU devices
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
    shardings = jax.tree.map(lambda _: replicated, _params())
    shardings["img"]["head"]["bias"] = split
    params, _ = ckpt_format.load_params(root, shardings=shardings)
    bias = params["img"]["head"]["bias"]
    assert bias.sharding == split
    assert len(bias.addressable_shards) == len(jax.devices())
    _assert_tree_equal(params, _params(3.0))


def test_errors_name_the_path(tmp_path):
  missing = str(tmp_path / "missing")
  with pytest.raises(VlaxError, match="missing"):
    ckpt_format.load_params(missing)
  with pytest.raises(VlaxError, match="missing"):
    ckpt_format.read_metadata(missing)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(VlaxError, match="no checkpoint steps.*empty"):
    ckpt_format.load_params(str(empty))

  root = str(tmp_path / "ckpt")
  ckpt_format.save_checkpoint(root, 5, _params(), META)
  with pytest.raises(VlaxError, match=r"step 7 not found .*ckpt.*\[5\]"):
    ckpt_format.load_params(root, step=7)
  with pytest.raises(VlaxError, match="already exists"):
    ckpt_format.save_checkpoint(root, 5, _params(), META)
  with pytest.raises(VlaxError, match="'statistics'"):
    ckpt_format.save_checkpoint(root, 6, _params(), {**META, "statistics": {1, 2}})

  # A step without its metadata item (e.g. a partial copy).
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(tmp_path / "ckpt" / "5" / "metadata")
  with pytest.raises(VlaxError, match=r"ckpt/5 has no 'metadata'"):
    ckpt_format.load_params(root)


def test_training_style_checkpoint_with_extra_items(tmp_path, caplog):
  """Training writes params with StandardSave plus its own items; we still load it,
  without Orbax warnings about the items we do not read (`vlax eval` printed four)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / "train")
  mngr = ocp.CheckpointManager(
      root, item_names=("params", "metadata", "opt_state", "train_state"),
      options=ocp.CheckpointManagerOptions(create=True))
  mngr.save(3, args=ocp.args.Composite(
      params=ocp.args.StandardSave(_params(4.0)),
      metadata=ocp.args.JsonSave({**META, "format": ckpt_format.FORMAT, "step": 3}),
      opt_state=ocp.args.StandardSave({"mu": np.zeros(3, np.float32)}),
      train_state=ocp.args.JsonSave({"data_iterator": "x"})))
  mngr.wait_until_finished()
  mngr.close()
  with caplog.at_level(logging.WARNING):
    params, meta = ckpt_format.load_params(root)
  _assert_tree_equal(params, _params(4.0))
  assert meta["step"] == 3
  assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
