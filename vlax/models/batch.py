"""The model batch: one typed structure from the sequence builder to the loss.

`ModelInputs` is what the model reads (`VLA.__call__`, decoding, `Policy`); `Batch` adds
the training targets and the per-example labels the loss breaks down by. Both are
`flax.struct` dataclasses, so they are pytrees: `jax.jit` takes them as arguments,
`jax.tree.map` builds their shardings or abstract shapes, and leaves may be numpy arrays
(one host's batch), `jax.Array`s (the global batch), tracers, `jax.ShapeDtypeStruct`s or
TF tensors (inside a tf.data map function).

Shapes (B = batch, N = cameras x history window, L = `SequenceConfig.max_len`):

  images             float32 [B, N, H, W, 3] in [-1, 1]
  image_mask         bool    [B, N]   False = absent camera / padded history step
  tokens             int32   [B, L]   prompt, targets, eos, then padding
  input_mask         bool    [B, L]   True = a real token (not padding)
  prefix_mask        bool    [B, L]   True = prompt (bidirectional attention)
  loss_mask          bool    [B, L]   True = a target of the next-token loss
  action_token_mask  bool    [B, L]   targets that are action tokens (optional)
  source             int32   [B]      0 = robot, 1 = web (optional)
  dataset_index      int32   [B]      index into the metadata's dataset_names (optional)

Optional fields are None when absent. tf.data pipelines, the data-iterator contract of
the trainer and the data-state checkpoints keep flat dicts whose keys are these field
names: `from_dict` / `to_dict` convert at that boundary.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import struct

from vlax.errors import VlaxError


def _field_names(cls) -> tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(cls))


@struct.dataclass
class ModelInputs:
  """What the model reads, in `VLA.__call__`'s argument order (see the module docstring)."""

  images: Any
  image_mask: Any
  tokens: Any
  input_mask: Any
  prefix_mask: Any

  @classmethod
  def keys(cls) -> tuple[str, ...]:
    return _field_names(cls)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], where: str = "model input dict") -> "ModelInputs":
    """Picks the input keys out of a flat dict (other keys are ignored)."""
    missing = [k for k in cls.keys() if k not in d]
    if missing:
      raise VlaxError(f"{where} lacks key(s) {missing} (has {sorted(d)})")
    return cls(**{k: d[k] for k in cls.keys()})

  def to_dict(self) -> dict[str, Any]:
    return {k: getattr(self, k) for k in self.keys()}

  def args(self) -> tuple:
    """Positional arguments of `VLA.__call__` / `greedy_decode` after the params."""
    return tuple(getattr(self, k) for k in self.keys())

  def dummy(self) -> "ModelInputs":
    """Batch-1 zeros with these per-example shapes and dtypes (for init / eval_shape)."""
    return type(self)(*(jnp.zeros((1,) + np.shape(v)[1:], v.dtype) for v in self.args()))

  @classmethod
  def zeros(cls, batch_size: int, num_images: int, image_size: int,
            seq_len: int) -> "ModelInputs":
    """All-zero host inputs with the documented dtypes (masks all True)."""
    b, n, s, l = batch_size, num_images, image_size, seq_len
    return cls(images=np.zeros((b, n, s, s, 3), np.float32), image_mask=np.ones((b, n), bool),
               tokens=np.zeros((b, l), np.int32), input_mask=np.ones((b, l), bool),
               prefix_mask=np.ones((b, l), bool))


_OPTIONAL = ("action_token_mask", "source", "dataset_index")


@struct.dataclass
class Batch:
  """Model inputs + targets + labels: one training / eval batch (see the module docstring)."""

  inputs: ModelInputs
  loss_mask: Any
  action_token_mask: Any = None
  source: Any = None
  dataset_index: Any = None

  @classmethod
  def keys(cls) -> tuple[str, ...]:
    """Every flat key, in order: the inputs', then the targets' and labels'."""
    return ModelInputs.keys() + tuple(k for k in _field_names(cls) if k != "inputs")

  @classmethod
  def required_keys(cls) -> tuple[str, ...]:
    return tuple(k for k in cls.keys() if k not in _OPTIONAL)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], where: str = "batch") -> "Batch":
    """Flat dict -> Batch; other keys are ignored, absent optional ones become None.
    The values are kept as they are (numpy, TF, jax arrays or tracers)."""
    missing = [k for k in cls.required_keys() if k not in d]
    if missing:
      raise VlaxError(f"{where} lacks key(s) {missing} (has {sorted(d)})")
    return cls(inputs=ModelInputs.from_dict(d, where),
               **{k: d.get(k) for k in _field_names(cls) if k != "inputs"})

  def to_dict(self) -> dict[str, Any]:
    """The flat dict of the present fields (the tf.data element layout)."""
    out = self.inputs.to_dict()
    out.update({k: getattr(self, k) for k in _field_names(type(self))
                if k != "inputs" and getattr(self, k) is not None})
    return out

  @classmethod
  def from_host(cls, batch: Any, local_batch_size: int, step: int) -> "Batch":
    """One host's batch from a data iterator (a dict of arrays, or a Batch) -> a checked
    numpy Batch. VlaxError naming the step and the key when it does not fit."""
    if isinstance(batch, Batch):
      batch = batch.to_dict()
    if not isinstance(batch, Mapping):
      raise VlaxError(f"data iterator yielded {type(batch).__name__} at step {step}, "
                      "expected a dict of arrays")
    out = cls.from_dict(batch, f"data batch at step {step}")
    for k, v in out.to_dict().items():
      if np.shape(v)[:1] != (local_batch_size,):
        raise VlaxError(f"data batch key {k!r} at step {step} has leading dim "
                        f"{np.shape(v)[0] if np.ndim(v) else None}, expected the per-host "
                        f"batch {local_batch_size} (batch_size / process_count)")
    return cls.from_dict({k: np.asarray(v) for k, v in out.to_dict().items()})

  @classmethod
  def zeros(cls, batch_size: int, num_images: int, image_size: int,
            seq_len: int) -> "Batch":
    """All-zero host batch with every field and the documented dtypes (masks all True):
    an example of the shapes for compiling."""
    b, l = batch_size, seq_len
    return cls(inputs=ModelInputs.zeros(b, num_images, image_size, l),
               loss_mask=np.ones((b, l), bool), action_token_mask=np.ones((b, l), bool),
               source=np.zeros((b,), np.int32), dataset_index=np.zeros((b,), np.int32))

  @property
  def size(self) -> int:
    """The leading (batch) dim."""
    return int(np.shape(self.inputs.tokens)[0])
