"""Web vision-language sources: toy generator, LLaVA JSON, TFRecord, TFDS key mapping,
and malformed data (skip vs raise, counted)."""

import json

import numpy as np
import pytest
import tensorflow as tf

from vlax.data import web
from vlax.data.sequence import DataCounters, numpy_iterator
from vlax.errors import VlaxError


def _read(sources, **kw):
  counters = DataCounters()
  ds = web.make_web_dataset(sources, image_size=32, counters=counters, repeat=False,
                            shuffle_buffer=1, **kw)
  return list(numpy_iterator(ds)), counters


def test_toy_examples_are_deterministic_and_answerable():
  a = web.toy_examples(40, image_size=48, seed=3)
  b = web.toy_examples(40, image_size=48, seed=3)
  assert all(np.array_equal(x["image"], y["image"]) and x["answer"] == y["answer"]
             for x, y in zip(a, b))
  assert any(not np.array_equal(x["image"], y["image"])
             for x, y in zip(a, web.toy_examples(40, image_size=48, seed=4)))
  cell = 48 / 3
  for ex in a:
    if ex["prompt"].startswith("where is the "):
      color = ex["prompt"].split()[3]
      p = web.TOY_POSITIONS.index(ex["answer"])
      cy, cx = int((p // 3 + 0.5) * cell), int((p % 3 + 0.5) * cell)
      assert tuple(ex["image"][cy, cx]) == web.TOY_COLORS[color]  # shape centre pixel
    assert ex["answer"]


def test_toy_and_tfrecord_sources(tmp_path):
  paths = web.write_toy_tfrecords(tmp_path, 10, image_size=40, seed=0, num_shards=2)
  assert len(paths) == 2
  exs, counters = _read([web.WebSource("tfrecord", name="rec", path=str(tmp_path / "*.tfrecord")),
                         web.WebSource("toy", num_examples=6, seed=1)])
  assert len(exs) == 16 and counters.total() == 0
  for ex in exs:
    assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
    assert ex["prompt"] and ex["answer"]
  names = {ex["dataset_name"]: ex["dataset_index"] for ex in exs}
  assert names == {b"rec": 0, b"toy": 1}
  # Per-host shards partition the data.
  h0, _ = _read([web.WebSource("toy", num_examples=6)], process_index=0, process_count=2)
  h1, _ = _read([web.WebSource("toy", num_examples=6)], process_index=1, process_count=2)
  assert len(h0) == len(h1) == 3


def _llava_fixture(tmp_path):
  (tmp_path / "img").mkdir()
  ok = web.toy_examples(1, 24, seed=0)[0]["image"]
  (tmp_path / "img" / "ok.png").write_bytes(web.encode_png(ok))
  (tmp_path / "img" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
  conv = lambda q, a: [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}]
  records = [
      {"image": "ok.png", "conversations": conv("what is this?", "a shape")
       + conv("and its color?", "green")},                               # 2 examples
      {"image": "missing.png", "conversations": conv("q", "a")},         # missing file
      {"image": "broken.jpg", "conversations": conv("q", "a")},          # undecodable
      {"image": "ok.png", "conversations": conv("q", "   ")},            # empty answer
      {"image": "ok.png", "conversations": conv("q", "long " * 100)},    # over-long
      {"image": "ok.png"},                                               # malformed
  ]
  return records


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_llava_source_skips_and_counts_malformed(tmp_path, fmt):
  records = _llava_fixture(tmp_path)
  path = tmp_path / f"data.{fmt}"
  path.write_text(json.dumps(records) if fmt == "json"
                  else "\n".join(json.dumps(r) for r in records))
  src = web.WebSource("llava", name="llava", path=str(path), image_dir=str(tmp_path / "img"))
  exs, counters = _read([src], on_error="skip", max_text_chars=200)
  assert sorted(ex["answer"] for ex in exs) == [b"a shape", b"green"]
  assert exs[0]["prompt"] in (b"what is this?", b"and its color?")  # <image> stripped
  c = counters.as_dict()
  for reason in ("missing_image", "undecodable_image", "empty_answer", "overlong_text",
                 "malformed_record"):
    assert c[f"web/{reason}"] == 1, (reason, c)
    assert c[f"web/{reason}/llava"] == 1
  assert counters.total() == 5


def test_llava_source_raise_names_the_culprit(tmp_path):
  records = _llava_fixture(tmp_path)
  path = tmp_path / "data.json"
  src = web.WebSource("llava", name="llava", path=str(path), image_dir=str(tmp_path / "img"))
  # Index-level problems raise while the source is built...
  path.write_text(json.dumps(records[:2]))
  with pytest.raises(VlaxError, match="missing image.*missing.png"):
    _read([src], on_error="raise")
  # ...image problems when the stream reaches them.
  path.write_text(json.dumps([records[0], records[2]]))
  with pytest.raises(VlaxError, match="undecodable image.*broken.jpg"):
    _read([src], on_error="raise")
  path.write_text(json.dumps([records[4]]))
  with pytest.raises(VlaxError, match="overlong text"):
    _read([src], on_error="raise", max_text_chars=200)
  with pytest.raises(VlaxError, match="on_error"):
    _read([src], on_error="ignore")


def test_tfrecord_malformed_counted(tmp_path):
  good = web.encode_png(np.zeros((8, 8, 3), np.uint8))
  with tf.io.TFRecordWriter(str(tmp_path / "x.tfrecord")) as w:
    w.write(web.web_tf_example(good, "caption en", "a black square"))
    w.write(web.web_tf_example(b"garbage", "caption en", "something"))
    w.write(web.web_tf_example(good, "caption en", ""))
  src = web.WebSource("tfrecord", name="rec", path=str(tmp_path / "*.tfrecord"))
  exs, counters = _read([src])
  assert [ex["answer"] for ex in exs] == [b"a black square"]
  assert counters.get("web/undecodable_image/rec") == 1
  assert counters.get("web/empty_answer/rec") == 1
  with pytest.raises(VlaxError, match="undecodable image.*x.tfrecord"):
    _read([src], on_error="raise")
  with pytest.raises(VlaxError, match="no files match"):
    _read([web.WebSource("tfrecord", path=str(tmp_path / "none*"))])


def test_tfds_key_mapping():
  # A coco_captions-like feature dict: captions is a sequence of {id, text}.
  feats = {"image": np.zeros((2, 20, 30, 3), np.uint8),
           "captions": {"text": np.array([[b"a cat", b"a pet"], [b"a dog", b"x"]]),
                        "id": np.zeros((2, 2), np.int64)},
           "question": np.array([b"what animal?", b"which?"])}
  ds = tf.data.Dataset.from_tensor_slices(feats)
  src = web.WebSource("tfds", name="coco", answer_key="captions/text", prompt="caption en")
  out = list(web.map_tfds_features(ds, src).as_numpy_iterator())
  assert [o["answer"] for o in out] == [b"a cat", b"a dog"]
  assert out[0]["prompt"] == b"caption en" and out[0]["image"].shape == (20, 30, 3)
  vqa = web.WebSource("tfds", name="vqa", prompt_key="question", answer_key="captions/text")
  assert next(web.map_tfds_features(ds, vqa).as_numpy_iterator())["prompt"] == b"what animal?"
  with pytest.raises(VlaxError, match="no key 'caption'"):
    web.map_tfds_features(ds, web.WebSource("tfds", name="c", answer_key="caption"))
  with pytest.raises(VlaxError, match="kind"):
    web.WebSource("imagenet")


def test_tfds_source_from_prepared_files(tmp_path):
  import tensorflow_datasets as tfds
  from vlax.data import rlds
  feats = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3)),
      "captions": tfds.features.Sequence({"text": tfds.features.Text()})})
  exs = [{"image": np.full((20, 30, 3), 40 * i, np.uint8),
          "captions": {"text": [f"caption {i}" if i != 2 else "", "other"]}}
         for i in range(4)]
  rlds.write_rlds("tiny_caps", str(tmp_path), feats, exs)
  src = web.WebSource("tfds", name="tiny_caps", data_dir=str(tmp_path))
  out, counters = _read([src])
  assert sorted(o["answer"] for o in out) == [b"caption 0", b"caption 1", b"caption 3"]
  assert out[0]["image"].shape == (32, 32, 3) and out[0]["prompt"] == b"caption en"
  assert counters.get("web/empty_answer/tiny_caps") == 1
  with pytest.raises(VlaxError, match="nope"):
    _read([web.WebSource("tfds", name="nope", data_dir=str(tmp_path))])
