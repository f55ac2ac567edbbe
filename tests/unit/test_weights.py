"""vlax.checkpoints.weights: which loader a path gets, and fitting params to a model."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlax.checkpoints import weights
from vlax.errors import VlaxError


def test_is_released(tmp_path):
  hf = tmp_path / "hf"
  hf.mkdir()
  (hf / "config.json").write_text("{}")
  assert weights.is_released(str(hf))
  # A training workdir / checkpoint root also holds a config.json, but has steps.
  run = tmp_path / "run"
  os.makedirs(run / "0" / "params")
  (run / "config.json").write_text("{}")
  assert not weights.is_released(str(run))
  npz = tmp_path / "pt.npz"
  np.savez(npz, a=np.zeros(1))
  assert weights.is_released(str(npz))
  assert not weights.is_released(str(tmp_path / "missing"))
  assert not weights.is_released("gs://bucket/ckpt")


def _like(**shapes):
  return {"llm": {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}}


def test_fit_restructures_casts_and_merges_lora():
  like = {"llm": {"embedder": {"input_embedding": jax.ShapeDtypeStruct((4, 2), jnp.float32)},
                  "w": jax.ShapeDtypeStruct((2, 3), jnp.float32)}}
  a, b = np.ones((2, 1), np.float32), np.full((1, 3), 2.0, np.float32)
  params = {"llm": {"embedder": {"input_embedding": np.zeros((4, 2), np.float64)},
                    "w": np.zeros((2, 3), np.float32), "w_lora_a": a, "w_lora_b": b}}
  out = weights.fit(params, {"lora": {"rank": 1, "alpha": 0.5}}, like)
  assert out["llm"]["embedder"]["input_embedding"].dtype == np.float32
  np.testing.assert_allclose(out["llm"]["w"], 0.5 * a @ b)
  assert set(out["llm"]) == {"embedder", "w"}


def test_fit_names_vocab_and_shape_mismatches():
  like = {"llm": {"embedder": {"input_embedding": jax.ShapeDtypeStruct((4, 2), jnp.float32)}}}
  with pytest.raises(VlaxError, match="init_from X: vocabulary size differs.*3 tokens"):
    weights.fit({"llm": {"embedder": {"input_embedding": np.zeros((3, 2))}}}, {}, like,
                "init_from X")
  with pytest.raises(VlaxError, match="1 mismatches.*llm/w: checkpoint missing"):
    weights.fit({}, {}, _like(w=(2, 3)))


def test_one_lora_merge_numpy_and_jax_agree():
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(3, 4, 5)).astype(np.float32),
            "w_lora_a": rng.normal(size=(3, 4, 2)).astype(np.float32),
            "w_lora_b": rng.normal(size=(3, 2, 5)).astype(np.float32)}
  host = weights.merge_lora(params, {"rank": 2, "alpha": 4.0})
  dev = jax.jit(lambda p: weights.merge_adapters(p, 2.0))(jax.tree.map(jnp.asarray, params))
  assert isinstance(host["w"], np.ndarray) and set(host) == set(dev) == {"w"}
  np.testing.assert_allclose(np.asarray(dev["w"]), host["w"], rtol=1e-5, atol=1e-5)
