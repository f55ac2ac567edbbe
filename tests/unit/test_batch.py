"""The typed model batch: its flat-dict boundary, the trainer's checks, and its pytree use."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlax.errors import VlaxError
from vlax.models.batch import Batch, ModelInputs
from vlax.models.vla import VLA
from vlax.training import mesh as mesh_lib
from vlax.training import train_step as step_lib

import _train_utils as U

# The tf.data element keys, checkpointed data states and the data-iterator contract use
# these strings: renaming a field is a format change.
FLAT_KEYS = ("images", "image_mask", "tokens", "input_mask", "prefix_mask", "loss_mask",
             "action_token_mask", "source", "dataset_index")


def test_flat_keys_are_the_documented_contract():
  assert Batch.keys() == FLAT_KEYS
  assert Batch.required_keys() == FLAT_KEYS[:6]
  assert ModelInputs.keys() == FLAT_KEYS[:5]
  # ModelInputs.args() is VLA.__call__'s positional order.
  assert tuple(inspect.signature(VLA.__call__).parameters)[1:] == ModelInputs.keys()


def test_dict_round_trip_ignores_extras_and_omits_absent_optionals():
  d = U.make_batch(4)
  b = Batch.from_dict({**d, "action": np.zeros((4, 2))})
  assert b.to_dict().keys() == d.keys()
  for k, v in b.to_dict().items():
    assert v is d[k]  # no copy, no conversion
  assert b.size == 4 and b.inputs.tokens is d["tokens"]
  part = Batch.from_dict({k: d[k] for k in Batch.required_keys()})
  assert part.source is None and part.dataset_index is None
  assert set(part.to_dict()) == set(Batch.required_keys())
  assert len(jax.tree.leaves(part)) == 6
  with pytest.raises(VlaxError, match=r"eval batch lacks key\(s\) \['loss_mask'\]"):
    Batch.from_dict({k: v for k, v in d.items() if k != "loss_mask"}, "eval batch")
  with pytest.raises(VlaxError, match=r"lacks key\(s\) \['images'\]"):
    ModelInputs.from_dict({k: v for k, v in d.items() if k != "images"})


def test_from_host_checks_like_the_trainer():
  d = U.make_batch(4)
  b = Batch.from_host({k: v.tolist() for k, v in d.items()}, 4, 7)
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(b))
  np.testing.assert_array_equal(b.inputs.images, d["images"])
  assert Batch.from_host(Batch.from_dict(d), 4, 7).to_dict().keys() == d.keys()
  with pytest.raises(VlaxError, match="yielded list at step 3, expected a dict of arrays"):
    Batch.from_host([d], 4, 3)
  with pytest.raises(VlaxError, match=r"data batch at step 3 lacks key\(s\) \['tokens'\]"):
    Batch.from_host({k: v for k, v in d.items() if k != "tokens"}, 4, 3)
  with pytest.raises(VlaxError, match="key 'source' at step 5 has leading dim 2, expected "
                                      "the per-host batch 4"):
    Batch.from_host({**d, "source": d["source"][:2]}, 4, 5)
  with pytest.raises(VlaxError, match="key 'dataset_index' at step 5 has leading dim None"):
    Batch.from_host({**d, "dataset_index": np.int32(0)}, 4, 5)


def test_dummy_and_zeros_shapes_and_dtypes():
  b = Batch.from_dict(U.make_batch(4))
  dummy = b.inputs.dummy()
  for x, y in zip(dummy.args(), b.inputs.args()):
    assert x.shape == (1,) + y.shape[1:] and x.dtype == y.dtype
  z = Batch.zeros(2, 3, 8, 5)
  assert z.inputs.images.shape == (2, 3, 8, 8, 3) and z.inputs.images.dtype == np.float32
  assert z.inputs.tokens.dtype == np.int32 and z.source.shape == (2,)
  assert z.inputs.input_mask.dtype == bool and z.loss_mask.shape == (2, 5)
  assert z.to_dict().keys() == set(FLAT_KEYS)


def test_pytree_through_global_batch_and_a_sharded_jit():
  mesh = mesh_lib.mesh_from_config({"data": 1, "fsdp": -1, "tensor": 1})
  n = jax.device_count()
  d = U.make_batch(2 * n)
  full = Batch.from_dict(d)
  part = Batch.from_dict({k: d[k] for k in Batch.required_keys()})
  for b in (full, part):
    g = mesh_lib.global_batch(b, mesh)
    assert isinstance(g, Batch) and (g.source is None) == (b.source is None)
    assert g.inputs.tokens.sharding == mesh_lib.batch_sharding(mesh)
    sh = step_lib.batch_shardings(mesh, b)
    assert jax.tree.structure(sh) == jax.tree.structure(b)
    f = jax.jit(lambda x: jnp.sum(x.loss_mask) + (0 if x.source is None else jnp.sum(x.source)),
                in_shardings=(sh,))
    want = d["loss_mask"].sum() + (0 if b.source is None else d["source"].sum())
    assert int(f(g)) == int(want)
