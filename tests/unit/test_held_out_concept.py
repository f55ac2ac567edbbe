"""A held-out concept ("purple"): kept out of the toy robot scenes and instructions, dropped
from web data on request, and counted in both streams (DataCounters), so a run can prove
that nothing leaked."""

import itertools

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from vlax.data import cotrain, web
from vlax.data.concepts import filter_robot_frames, mentions
from vlax.data.oxe.toy import toy_episodes
from vlax.data.sequence import DataCounters, numpy_iterator
from vlax.data.text_tokenizer import load_toy_tokenizer
from vlax.envs.toy_env import COLORS, held_out_colors, scene_kwargs
from vlax.errors import VlaxError

PURPLE_TOKEN = load_toy_tokenizer().encode(" purple")


def _episodes(**scene):
  """(instructions, whether any frame shows a purple pixel) per episode."""
  out = []
  for ep in toy_episodes("b", 25, image_size=16, num_blocks=2, block_size=0.2, **scene):
    steps = ep["steps"]
    shows = any((s["observation"]["image"] == COLORS["purple"]).all(-1).any() for s in steps)
    out.append((steps[0]["language_instruction"], shows))
  return out


def test_toy_robot_scenes_hold_the_colour_out():
  assert len(PURPLE_TOKEN) == 1  # the toy tokenizer has one piece for it
  default = _episodes()
  assert any("purple" in i for i, _ in default) and any(s for _, s in default)
  absent = _episodes(**held_out_colors("purple", "absent"))
  assert not any("purple" in i or s for i, s in absent)
  distractor = _episodes(**held_out_colors("purple", "distractor"))
  assert not any("purple" in i for i, _ in distractor)
  assert any(s for _, s in distractor)  # on the table, never the target
  assert held_out_colors("purple", "keep") == {} and held_out_colors("", "absent") == {}
  with pytest.raises(ValueError, match="not a toy block colour"):
    held_out_colors("pruple")
  with pytest.raises(ValueError, match="held-out mode"):
    held_out_colors("purple", "sometimes")
  # Configs without the keys (the debug config, old checkpoints) keep their scene.
  assert scene_kwargs({"toy_num_blocks": 1, "toy_block_size": 0.2}) == {
      "num_blocks": 1, "block_size": 0.2}
  held = scene_kwargs({"toy_num_blocks": 2, "held_out_concept": "Purple"})
  assert "purple" not in held["target_colors"] + held["distractor_colors"]


def test_mentions_whole_words():
  assert mentions("move to the Purple block", "purple")
  assert mentions("a purple circle at the top\nred", "purple")
  assert not mentions("a purplish blob", "purple") and not mentions("purple", "")


def _web(concept="", drop=False):
  counters = DataCounters()
  ds = web.make_web_dataset([web.WebSource("toy", num_examples=48)], image_size=32,
                            counters=counters, repeat=False, shuffle_buffer=1,
                            concept=concept, drop_concept=drop)
  return list(numpy_iterator(ds)), counters


def _shows_purple(ex):
  return (ex["image"] == web.TOY_COLORS["purple"]).all(-1).any()


def test_web_stream_drops_and_counts_the_concept():
  involved = sum(mentions(f"{e['prompt']} {e['answer']} {' '.join(e['colors'])}", "purple")
                 for e in web.toy_examples(48, 32, seed=0))
  assert 0 < involved < 48
  plain, counters = _web()
  assert len(plain) == 48 and counters.total() == 0
  assert any(_shows_purple(e) for e in plain)  # the pixel check below can see it
  kept, counters = _web("purple")
  assert len(kept) == 48 and counters.get("web/concept_mention") == involved
  assert counters.get("web/concept_mention/toy") == involved
  dropped, counters = _web("purple", drop=True)
  assert len(dropped) == 48 - involved
  assert counters.get("web/concept_dropped") == involved
  assert counters.get("web/concept_mention") == 0
  for ex in dropped:
    assert b"purple" not in ex["prompt"] + ex["answer"] and not _shows_purple(ex)
  with pytest.raises(VlaxError, match="drop_concept needs a concept"):
    _web("", drop=True)


def test_robot_filter_counts_or_drops_instructions():
  frames = tf.data.Dataset.from_tensor_slices({
      "language_instruction": ["move to the purple block", "move to the red block",
                               "Purple!"],
      "dataset_name": ["x", "x", "y"]})
  for drop, n in ((False, 3), (True, 1)):
    counters = DataCounters()
    out = list(filter_robot_frames(frames, "purple", counters, drop).as_numpy_iterator())
    assert len(out) == n
    key = "robot/concept_dropped" if drop else "robot/concept_mention"
    assert counters.as_dict() == {key: 2, f"{key}/x": 1, f"{key}/y": 1}


def _config(**data):
  config = ml_collections.ConfigDict({"seed": 0, "batch_size": 8})
  config.data = ml_collections.ConfigDict({
      "toy_episodes": 12, "toy_episode_len": 10, "toy_num_blocks": 2,
      "toy_block_size": 0.2, "image_size": 16, "chunk_len": 2, "shuffle_buffer": 16,
      "augment": False, "num_bins": 16, "max_len": 40,
      "web_sources": ({"kind": "toy", "num_examples": 32},), "web_shuffle_buffer": 4,
      **data})
  return config


def _run(tmp_path, **data):
  it, _ = cotrain.make_data_iterator(_config(**data), process_index=0, process_count=1,
                                     workdir=str(tmp_path))
  batches = list(itertools.islice(it, 8))
  tokens = np.concatenate([b["tokens"] for b in batches])
  source = np.concatenate([b["source"] for b in batches])
  has = (tokens == PURPLE_TOKEN[0]).any(-1)
  return it.counters, has[source == 0].sum(), has[source == 1].sum()


def test_training_stream_proves_no_leak(tmp_path):
  counters, robot, webs = _run(tmp_path / "held", held_out_concept="purple",
                               web_drop_concept=True)
  assert robot == 0 and webs == 0  # no example's tokens hold "purple"
  assert counters.get("robot/concept_mention") == 0
  assert counters.get("robot/concept_dropped") == 0  # the scenes were clean already
  assert counters.get("web/concept_mention") == 0
  assert counters.get("web/concept_dropped") > 0
  # Counting only: the same counters see the concept in both streams.
  counters, robot, webs = _run(tmp_path / "keep", held_out_concept="purple",
                               held_out_robot="keep")
  assert robot > 0 and webs > 0
  assert counters.get("robot/concept_mention") > 0
  assert counters.get("web/concept_mention") > 0
  assert counters.get("web/concept_dropped") == 0


@pytest.mark.parametrize("data,match", [
    ({"held_out_concept": "pruple"}, "not a toy block colour"),
    ({"held_out_concept": "two words"}, "one word"),
    ({"held_out_concept": "purple", "held_out_robot": "maybe"}, "held_out_robot"),
    ({"web_drop_concept": True}, "needs config.data.held_out_concept"),
])
def test_config_errors_before_any_data(tmp_path, data, match):
  with pytest.raises(VlaxError, match=match):
    cotrain.make_data_iterator(_config(**data), process_index=0, process_count=1,
                               workdir=str(tmp_path))
  assert not list(tmp_path.iterdir())
