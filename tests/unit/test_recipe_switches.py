"""The Meta-World recipe switches of config.data / config.loss (README "Recipe switches"):
random shift, proprio dropout, proprio source, zero cameras, action label smoothing."""

import itertools

import jax
import jax.numpy as jnp

import numpy as np
import pytest
import tensorflow as tf

import _seq_utils as S
from vlax.actions import BinTokenizer, FASTTokenizer, default_action_vocab
from vlax.data import images, robot
from vlax.data.oxe import toy
from vlax.data.sequence import SequenceBuilder, SequenceConfig, numpy_iterator
from vlax.data.text_tokenizer import load_toy_tokenizer
from vlax.errors import VlaxError
from vlax.training import config_checks

SIZE = 16
SHIFT = 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("recipe_toy"))
  toy.write_toy_robot_data(d, num_episodes=6, image_size=SIZE, episode_len=6, num_shards=1)
  return d, str(tmp_path_factory.mktemp("recipe_cache"))


def _frames(data, n=12, **kw):
  d, cache = data
  args = dict(image_size=SIZE, chunk_len=2, seed=0, shuffle_buffer=20, augment=False,
              stats_cache_dir=cache, process_index=0, process_count=1, progress=False,
              history=2)
  args.update(kw)
  ds, _ = robot.make_robot_dataset([("toy_reach_b", 1.0)], d, **args)
  return list(itertools.islice(ds.as_numpy_iterator(), n))


def _np_shift(img, dy, dx):
  """Reference: edge pad by SHIFT, crop at offset (SHIFT + dy, SHIFT + dx)."""
  h, w = img.shape[-3], img.shape[-2]
  pad = [(0, 0)] * (img.ndim - 3) + [(SHIFT, SHIFT), (SHIFT, SHIFT), (0, 0)]
  p = np.pad(img, pad, mode="edge")
  return p[..., SHIFT + dy:SHIFT + dy + h, SHIFT + dx:SHIFT + dx + w, :]


def _offsets(plain, shifted):
  """The (dy, dx) that turn `plain` [H, W, 3] into `shifted`."""
  r = range(-SHIFT, SHIFT + 1)
  return {(dy, dx) for dy in r for dx in r
          if np.array_equal(_np_shift(plain, dy, dx), shifted)}


def test_random_shift_op_is_edge_pad_and_crop_same_over_history():
  rng = np.random.default_rng(0)
  hist = rng.integers(0, 256, (3, SIZE, SIZE, 3)).astype(np.uint8)
  out = images.random_shift(tf.constant(hist), SHIFT, tf.constant([5, 7], tf.int64)).numpy()
  per_step = [_offsets(hist[t], out[t]) for t in range(3)]
  assert all(len(o) == 1 for o in per_step) and per_step[0] == per_step[1] == per_step[2]
  np.testing.assert_array_equal(
      images.random_shift(tf.constant(hist), 0, tf.constant([5, 7], tf.int64)).numpy(), hist)


def test_random_shift_pipeline_per_example_same_across_history_train_only(data):
  plain = _frames(data)
  shifted = _frames(data, random_shift=SHIFT)
  offsets = []
  for a, b in zip(plain, shifted):
    np.testing.assert_array_equal(a["action"], b["action"])  # same order, same frames
    for cam in ("primary", "wrist"):
      x, y = a["observation"][f"image_{cam}"], b["observation"][f"image_{cam}"]
      common = _offsets(x[0], y[0]) & _offsets(x[1], y[1])
      assert common, f"history steps of camera {cam} were shifted differently"
      if len(common) == 1:
        offsets.append(next(iter(common)))
  assert len(set(offsets)) > 3  # differs across examples (and cameras)
  assert any(o != (0, 0) for o in offsets)
  # Validation / eval stream: never shifted.
  ev = _frames(data, train=False, n=6, split="train")
  ev_shift = _frames(data, train=False, n=6, random_shift=SHIFT, split="train")
  for a, b in zip(ev, ev_shift):
    np.testing.assert_array_equal(a["observation"]["image_primary"],
                                  b["observation"]["image_primary"])


def _builder(**kw):
  text = load_toy_tokenizer()
  tok = BinTokenizer()
  cfg = SequenceConfig(**{"max_len": 64, "cameras": ("primary", "wrist"),
                          "image_size": (S.IMG, S.IMG), **kw})
  return SequenceBuilder(cfg, text, tok, default_action_vocab(text.vocab_size,
                                                              tok.vocab_size))


def test_proprio_dropout_prompt_is_the_no_proprio_prompt():
  frames, _, _ = S.synthetic_frames("arm7", 0, n=6)
  dropped = np.array([True, False, True, False, False, True])
  frames["observation"]["proprio_dropped"] = dropped
  with_p = list(numpy_iterator(_builder(proprio_bins=16).robot_dataset(
      tf.data.Dataset.from_tensor_slices(frames))))
  del frames["observation"]["proprio_dropped"]
  never = list(numpy_iterator(_builder(proprio_bins=16).robot_dataset(
      tf.data.Dataset.from_tensor_slices(frames))))
  off = list(numpy_iterator(_builder(proprio_bins=0).robot_dataset(
      tf.data.Dataset.from_tensor_slices(frames))))
  for d, ex, n, o in zip(dropped, with_p, never, off):
    want = o if d else n
    np.testing.assert_array_equal(ex["tokens"], want["tokens"])
    np.testing.assert_array_equal(ex["prefix_mask"], want["prefix_mask"])
  assert not np.array_equal(never[0]["tokens"], off[0]["tokens"])


def test_proprio_action_tokens_one_ordered_action_id_per_dim():
  text_b, tok_b = _builder(proprio_bins=16), _builder(proprio_bins=16,
                                                     proprio_format="action_tokens")
  head = tok_b.robot_prompt_ids(b"push the puck")
  p = np.array([-1.0, -0.5, -0.06, 0.06, 0.7, 1.0, 3.0], np.float32)
  mask = np.ones(len(p), bool)
  mask[3] = False  # masked dims are left out, as in the text format
  ids = tok_b.robot_prompt_ids(b"push the puck", p, mask)
  text_ids = text_b.robot_prompt_ids(b"push the puck", p, mask)
  assert len(text_ids) > len(ids)  # digits cost more than one token per dim
  vocab = tok_b.vocab
  in_range = (ids >= vocab.start) & (ids < vocab.end)
  assert in_range.sum() == mask.sum()  # one action id per valid dim, nothing else
  bins = vocab.from_vocab(ids[in_range])
  # 16 proprio bins on the 256-bin action grid: bin b -> the action bin of its centre.
  np.testing.assert_array_equal(bins, [8, 72, 120, 216, 248, 248])
  assert np.all(np.diff(bins) >= 0)
  assert ids[:len(head) - 1].tolist() == head[:-1].tolist()  # same prompt, then State
  with pytest.raises(VlaxError, match="proprio_format"):
    _builder(proprio_bins=16, proprio_format="digits")
  with pytest.raises(VlaxError, match="action_tokens.*FAST|FAST.*proprio_format"):
    SequenceBuilder(SequenceConfig(proprio_bins=16, proprio_format="action_tokens"),
                    load_toy_tokenizer(), _fast_tokenizer(), default_action_vocab(
                        load_toy_tokenizer().vocab_size, 64))


def _fast_tokenizer():
  return FASTTokenizer(vocab_size=64)


def test_proprio_dropout_pipeline_rate_and_train_only(data):
  fr = _frames(data, n=200, proprio_dropout=0.5, history=1)
  rate = np.mean([f["observation"]["proprio_dropped"] for f in fr])
  assert 0.35 < rate < 0.65, rate
  ev = _frames(data, n=4, proprio_dropout=0.5, train=False, history=1,
                split="train")
  assert "proprio_dropped" not in ev[0]["observation"]
  assert "proprio_dropped" not in _frames(data, n=1, history=1)[0]["observation"]


def test_proprio_noise_gaussian_on_valid_proprio_train_only_rest_unchanged(data):
  plain = _frames(data, n=100, history=1)
  noisy = _frames(data, n=100, history=1, proprio_noise=0.1)
  diffs = []
  for a, b in zip(plain, noisy):
    np.testing.assert_array_equal(a["action"], b["action"])  # same frames, same order
    np.testing.assert_array_equal(a["observation"]["image_primary"],
                                  b["observation"]["image_primary"])
    m = a["observation"]["proprio_pad_mask"]
    diffs.append((b["observation"]["proprio"] - a["observation"]["proprio"])[m])
  d = np.concatenate(diffs)
  assert d.size > 100 and abs(d.mean()) < 0.03 and 0.08 < d.std() < 0.12, (d.mean(), d.std())
  ev = dict(n=3, history=1, train=False, split="train")
  for a, b in zip(_frames(data, **ev), _frames(data, proprio_noise=0.1, **ev)):
    np.testing.assert_array_equal(a["observation"]["proprio"], b["observation"]["proprio"])


@pytest.mark.parametrize("key,value", [("data.random_shift", -1),
                                       ("data.proprio_dropout", 1.5),
                                       ("data.proprio_noise", -0.1),
                                       ("loss.action_label_smoothing", -0.1)])
def test_config_checks(key, value):
  import ml_collections
  c = ml_collections.ConfigDict({"data": {}, "loss": {}})
  group, name = key.split(".")
  c[group][name] = value
  with pytest.raises(VlaxError, match=key.replace(".", r"\.")):
    config_checks.check_train_config(c)


# --- loss.action_label_smoothing ------------------------------------------------------


def test_label_smoothing_target_sums_to_one_peaks_at_label_stays_in_range():
  from vlax.training import loss as loss_lib
  rng = (100, 110)
  targets = jnp.asarray([[104, 100, 109, 5]])
  ids, w = loss_lib.smoothed_targets(targets, 1.0, rng)
  w, ids = np.asarray(w), np.asarray(ids)
  np.testing.assert_allclose(w[0, :3].sum(-1), 1.0, rtol=1e-6)
  assert w[0, 3].sum() == 0  # not an action id: no soft target (never scored)
  for j, t in enumerate([104, 100, 109]):
    assert ids[0, j][np.argmax(w[0, j])] == t  # the peak is the label
    assert ((ids[0, j] >= 100) & (ids[0, j] < 110)).all()
  # Symmetric in the middle of the range, renormalized at its ends.
  mid = {int(i): float(x) for i, x in zip(ids[0, 0], w[0, 0]) if x > 0}
  assert mid[103] == pytest.approx(mid[105]) and mid[103] < mid[104]
  assert w[0, 1].max() > w[0, 0].max()


def test_label_smoothing_only_on_action_tokens_and_refused_for_fast():
  from vlax.models.batch import Batch, ModelInputs
  from vlax.training import loss as loss_lib
  b, t, v = 2, 6, 32
  logits = jax.random.normal(jax.random.key(0), (b, t, v))
  tokens = jnp.asarray([[1, 2, 20, 21, 22, 3], [1, 2, 25, 26, 27, 3]])
  loss_mask = jnp.asarray([[0, 0, 1, 1, 1, 1]] * 2, bool)
  amask = jnp.asarray([[0, 0, 1, 1, 1, 0]] * 2, bool)
  batch = Batch(inputs=ModelInputs(images=jnp.zeros((b, 0, 4, 4, 3)),
                                   image_mask=jnp.zeros((b, 0), bool), tokens=tokens,
                                   input_mask=jnp.ones((b, t), bool),
                                   prefix_mask=~loss_mask),
                loss_mask=loss_mask, action_token_mask=amask)
  plain = loss_lib.loss_sums(logits, batch, 1)
  smooth = loss_lib.loss_sums(logits, batch, 1, label_smoothing=1.0, action_range=(16, 32))
  tiny = loss_lib.loss_sums(logits, batch, 1, label_smoothing=0.05, action_range=(16, 32))
  assert float(smooth["loss_sum"]) != pytest.approx(float(plain["loss_sum"]))
  assert float(tiny["loss_sum"]) == pytest.approx(float(plain["loss_sum"]), rel=1e-5)
  assert float(smooth["action_correct"]) == float(plain["action_correct"])
  # Only action positions change: the eos target (non-action) keeps its CE.
  lg, tg, _, am = loss_lib.shifted_targets(logits, tokens, loss_mask, amask)
  ce = loss_lib.token_cross_entropy(lg, tg)
  soft = loss_lib.smoothed_cross_entropy(lg, tg, 1.0, (16, 32))
  want = float(plain["loss_sum"]) + float(((soft - ce) * am).sum())
  assert float(smooth["loss_sum"]) == pytest.approx(want, rel=1e-5)
  vocab = {"start": 16, "size": 16}
  assert loss_lib.smoothing_action_range({"type": "bins", "num_bins": 16,
                                          "vocab": vocab}) == (16, 32)
  assert loss_lib.smoothing_action_range({"type": "bins", "num_bins": 8,
                                          "vocab": {**vocab, "reverse": True}}) == (24, 32)
  with pytest.raises(VlaxError, match="FAST"):
    loss_lib.smoothing_action_range({"type": "fast", "vocab": vocab})


# --- data.cameras = () (a state-only policy) -----------------------------------------


def test_zero_cameras_pipeline_train_step_and_policy():
  from vlax.inference.policy import Policy
  from vlax.models.batch import Batch
  from vlax.training import mesh as mesh_lib
  from vlax.training import trainer
  import _train_utils as U
  builder = _builder(cameras=(), proprio_bins=16, max_len=64, image_size=(32, 32),
                     proprio_source="full_state")
  frames, _, stats = S.synthetic_frames("arm7", 0, n=8)
  for k in [k for k in frames["observation"] if k.startswith("image_")]:
    del frames["observation"][k]
  examples = list(numpy_iterator(builder.robot_dataset(
      tf.data.Dataset.from_tensor_slices(frames))))
  assert examples[0]["images"].shape == (0, 32, 32, 3)
  batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  meta = builder.metadata(dataset_names=["arm7"], chunk_len=S.K,
                          statistics={"arm7": stats})
  config = U.tiny_config(**{"loss.action_label_smoothing": 1.0})
  model_config = trainer.build_model_config(config, meta)
  mesh = mesh_lib.mesh_from_config(dict(config.mesh))
  setup = trainer.ModelSetup(config, model_config, mesh, batch, 1,
                             action_tokenizer=meta["action_tokenizer"])
  state = setup.create_state(setup.init_params(0), 0)
  state, metrics = setup.step(state, mesh_lib.global_batch(Batch.from_dict(batch), mesh))
  assert np.isfinite(float(metrics["last"]["loss"]))
  meta["model"] = model_config.to_dict()
  policy = Policy.from_params(jax.tree.map(np.asarray, state.params), meta)
  assert policy.cameras == ()
  # The saved data config's proprio_source decides which observation key feeds the prompt.
  act = policy.predict_action({"full_state": np.zeros(7, np.float32)}, "pick up the block")
  assert act.shape == (S.K, 7) and np.isfinite(act).all()
  with pytest.raises(VlaxError, match="camera"):
    policy.predict_action({"image_primary": np.zeros((8, 8, 3), np.uint8),
                           "proprio": np.zeros(7, np.float32)}, "pick up the block")


# --- data.proprio_source --------------------------------------------------------------


def test_proprio_source_full_state_spec_statistics_key_and_errors(monkeypatch):
  from vlax.data import rlds
  from vlax.data import standardized, statistics
  from vlax.data.cotrain import RobotData, check_fits
  from vlax.data.oxe import registry
  spec = registry.get_spec("metaworld_push")
  full = registry.with_proprio_source(spec, "full_state")
  assert registry.with_proprio_source(spec, "proprio") is spec
  assert full.proprio_dim == 39 and full.name == spec.name
  t = 3
  state = np.arange(t * 39, dtype=np.float32).reshape(t, 39)
  raw = {"observation": {"state": state[:, :4] * 0, "full_state": state},
         "action": np.zeros((t, 4), np.float32),
         "language_instruction": tf.constant(["push"] * t),
         "_episode_id": tf.constant(["e0"] * t)}
  out = standardized.standardize(full, {k: tf.nest.map_structure(tf.constant, v)
                                        for k, v in raw.items()}, with_images=False)
  np.testing.assert_array_equal(out["proprio"].numpy(), state)
  monkeypatch.setattr(rlds, "dataset_dir", lambda *a, **k: "d")
  monkeypatch.setattr(rlds, "data_files", lambda *a, **k: [])
  key = lambda s: statistics.cache_key(s, "d", "train")[0]
  assert key(full) != key(spec)
  with pytest.raises(VlaxError, match="toy_reach_a.*full_state"):
    registry.with_proprio_source(registry.get_spec("toy_reach_a"), "full_state")
  with pytest.raises(VlaxError, match="proprio_source"):
    registry.with_proprio_source(spec, "joints")
  # 39 binned dims do not fit a 64-token sequence: one line naming data.max_len.
  stats = {"action": {"mean": [0.0] * 4}, "proprio": {"mean": [0.0] * 39}}
  robot = RobotData((("metaworld_push", 1.0),), "", {"metaworld_push": stats})
  with pytest.raises(VlaxError, match=r"metaworld_push.*data\.max_len"):
    check_fits(_builder(proprio_bins=64, max_len=64, proprio_source="full_state"), robot,
               chunk_len=4)
  check_fits(_builder(proprio_bins=64, max_len=256), robot, chunk_len=4)
