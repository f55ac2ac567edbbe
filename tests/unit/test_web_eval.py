"""Held-out web (VQA) evaluation (`vlax eval --web`, `vlax.evaluation.web_eval`): the
held-out split, question types and normalization, the multiple-choice scorer on a
hand-made logit function, the report and its chance levels, the CLI and the trainer's
periodic web_eval/ metrics, on a tiny random checkpoint (`tests/_policy_utils.py`)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlax import cli
from vlax.checkpoints import weights
from vlax.data.web import WebSource, toy_examples
from vlax.errors import VlaxError
from vlax.evaluation import web_eval
from vlax.inference.policy import Policy
from vlax.training import mesh as mesh_lib
from vlax.training import trainer
from vlax.training.config_checks import check_train_config

import _policy_utils as P
import _train_utils as U

TOY = {"kind": "toy", "num_examples": 64, "seed": 3}
NUM = 24  # held-out examples of the CLI run and of the trainer's web_eval_fn: one compile


def _random_params(config, seed=0):
  """Random host params from the model's shapes (no init compile: seconds saved)."""
  rng = np.random.default_rng(seed)
  tree = {}
  for path, shape in weights.abstract_shapes(config).items():
    *parents, leaf = path.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = (rng.normal(size=shape) * 0.1).astype(np.float32)
  return tree


def _metadata(web_sources=(TOY,)):
  config, meta = P.make_metadata(statistics={})
  meta["config"] = {"data": {"web_sources": list(web_sources)}}
  return config, meta


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  config, meta = _metadata()
  params = _random_params(config)
  path = P.make_checkpoint(tmp_path_factory.mktemp("web") / "ckpt", params=params,
                           metadata=meta)
  return os.path.dirname(path), params, meta


def test_question_type_and_normalize_answer():
  assert web_eval.question_type("what color is the square?") == "color"
  assert web_eval.question_type("What colour is it") == "color"
  assert web_eval.question_type("where is the red circle?") == "position"
  assert web_eval.question_type("what shape is blue?") == "shape"
  assert web_eval.question_type("caption en") == "caption"
  assert web_eval.question_type("how many dogs?") == "other"
  assert web_eval.normalize_answer("  The Top-Left. ") == "top left"
  assert web_eval.normalize_answer("a red square at the top") == "red square at top"
  assert web_eval.normalize_answer("Red!") == web_eval.normalize_answer("red")
  assert web_eval.normalize_answer("red") != web_eval.normalize_answer("reds")


def test_heldout_examples_are_disjoint_from_training():
  sources = [WebSource(kind="toy", num_examples=300, seed=0)]
  seen = {web_eval.content_key(e) for e in toy_examples(300, 32, 0)}
  exs, info = web_eval.heldout_examples(sources, 200, 32)
  assert len(exs) == 200 and info["seed"] == web_eval.heldout_seed(0) != 0
  assert not any(web_eval.content_key(e) in seen for e in exs)
  # The toy grid repeats one-object scenes: some fresh draws were seen and dropped.
  assert info["dropped_seen_in_training"] > 0
  assert info["generated"] == 200 + info["dropped_seen_in_training"]
  # Drawing from the training seed itself: its first 300 examples are all dropped.
  exs, info = web_eval.heldout_examples(sources, 10, 32, seed=0)
  assert info["dropped_seen_in_training"] >= 300
  assert not any(web_eval.content_key(e) in seen for e in exs)
  again, _ = web_eval.heldout_examples(sources, 10, 32, seed=0)  # deterministic
  assert [e["prompt"] for e in again] == [e["prompt"] for e in exs]


def test_no_web_sources_is_a_clear_error(ckpt):
  with pytest.raises(VlaxError, match="ckpt X has no web sources"):
    web_eval.web_sources_of({"web_sources": ()}, "ckpt X")
  assert web_eval.web_sources_of({}, "x")[0].kind == "toy"  # the data config's default
  with pytest.raises(VlaxError, match="no held-out split"):
    web_eval.heldout_examples([WebSource(kind="tfrecord", path="/x/*.tfrecord")], 5, 32)
  _, params, _ = ckpt
  _, meta = _metadata(web_sources=())
  policy = Policy.from_params(params, meta)
  with pytest.raises(VlaxError, match="has no web sources"):
    web_eval.evaluate_web(None, None, policy=policy, print_fn=None)


def test_answer_logprob_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
  tokens = rng.integers(0, 7, size=(2, 5)).astype(np.int32)
  mask = np.array([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]], bool)
  got = np.asarray(web_eval.answer_logprob(jnp.asarray(logits), tokens, mask))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = [sum(logp[b, i - 1, tokens[b, i]] for i in range(1, 5) if mask[b, i])
          for b in range(2)]
  np.testing.assert_allclose(got, want, rtol=1e-5)


def _knowing_score_fn(builder, max_len=8):
  """A score function whose hand-made 'model' knows one answer A: after the prompt, its
  logits put 8 on A's next token (then eos) and are flat elsewhere."""
  vocab = builder.model_vocab_size

  def logits_fn(answer_ids, inputs):
    b, l = inputs.tokens.shape
    start = jnp.sum(inputs.prefix_mask, axis=1)  # the first answer position
    k = jnp.arange(l)[None] + 1 - start[:, None]  # answer index position i predicts
    want = jnp.where((k >= 0) & (k < max_len), answer_ids[jnp.clip(k, 0, max_len - 1)], -1)
    return 8.0 * jax.nn.one_hot(want, vocab)  # -1: no token favoured
  score = web_eval.make_score_fn(logits_fn)

  def knowing(answer):
    ids = np.full(max_len, -1, np.int32)
    a = list(builder.web_ids(b"", answer.encode())[1]) + [builder.eos_id]
    ids[:len(a)] = a
    return lambda inputs, target: score(jnp.asarray(ids), inputs, target)
  return knowing


def test_multiple_choice_picks_the_answer_the_logits_favour():
  builder = P.make_builder()
  exs = [e for e in toy_examples(60, 32, 1) if e["prompt"] != "caption en"][:12]
  enc = web_eval.encode_examples(builder, exs)
  cands = web_eval.candidate_sets(enc.types, enc.answers, known=web_eval.TOY_ANSWERS)
  assert set(cands) == {"color", "position", "shape"}
  knowing = _knowing_score_fn(builder)
  # "top left" beats its prefix "top" (both candidates): the eos is scored too.
  for target in ("purple", "red", "top left", "top", "circle"):
    choices = web_eval.multiple_choice(knowing(target), builder, enc, cands,
                                       num_images=2, batch_size=5)
    for t, c in zip(enc.types, choices):
      assert c == target if target in cands[t] else c in cands[t], (t, target, c)


def test_summarize_scores_and_chance_levels():
  builder = P.make_builder()
  exs = [{"image": np.zeros((8, 8, 3), np.uint8), "prompt": p, "answer": a} for p, a in [
      ("what color is the square?", "red"), ("what color is the circle?", "blue"),
      ("what color is the triangle?", "green"), ("where is the red square?", "top left"),
      ("where is the blue circle?", "center"), ("caption en", "a red square at the top")]]
  enc = web_eval.encode_examples(builder, exs)
  cands = web_eval.candidate_sets(enc.types, enc.answers)
  assert cands == {"color": ["blue", "green", "red"], "position": ["center", "top left"]}
  assert web_eval.candidate_sets(enc.types, enc.answers, known=web_eval.TOY_ANSWERS)[
      "color"] == sorted(web_eval.TOY_ANSWERS["color"])  # shape: no question, no entry
  assert "shape" not in web_eval.candidate_sets(enc.types, enc.answers,
                                                known=web_eval.TOY_ANSWERS)
  assert web_eval.candidate_sets(enc.types, enc.answers, max_candidates=2) == {
      "position": ["center", "top left"]}  # color has 3 > 2: exact match only
  texts = ["The Red.", "blue", "red", "top left", "left", "a red square at the top"]
  finished = [True, False, True, True, True, True]  # "blue" never stopped: no match
  choices = ["red", "blue", "red", "center", "center", None]
  result, records = web_eval.summarize(enc, texts, finished, choices, cands)
  t = result["types"]
  assert t["color"]["exact_match"] == pytest.approx(1 / 3)
  assert t["color"]["multiple_choice"] == pytest.approx(2 / 3)
  assert t["color"]["chance"] == pytest.approx(1 / 3) and t["color"]["num_candidates"] == 3
  assert t["position"]["exact_match"] == 0.5 and t["position"]["chance"] == 0.5
  assert t["position"]["multiple_choice"] == 0.5
  assert t["caption"]["multiple_choice"] is None and t["caption"]["exact_match"] == 1.0
  o = result["overall"]
  assert o["num_examples"] == 6 and o["num_multiple_choice"] == 5
  assert o["exact_match"] == pytest.approx(3 / 6)
  assert o["multiple_choice"] == pytest.approx(3 / 5)
  assert o["multiple_choice_chance"] == pytest.approx((3 * (1 / 3) + 2 * 0.5) / 5)
  assert o["unfinished"] == 1 and t["color"]["unfinished"] == 1
  assert records[1]["exact_match"] is False and records[0]["exact_match"] is True
  assert web_eval.training_metrics(result) == {
      "web_eval/exact_match": 0.5, "web_eval/mc_accuracy": pytest.approx(0.6),
      "web_eval/caption/exact_match": 1.0,
      "web_eval/color/exact_match": pytest.approx(1 / 3),
      "web_eval/color/mc_accuracy": pytest.approx(2 / 3),
      "web_eval/position/exact_match": 0.5, "web_eval/position/mc_accuracy": 0.5}


def test_cli_web_writes_report_and_plot(ckpt, tmp_path, capsys):
  root, _, _ = ckpt
  out = tmp_path / "out"
  assert cli.main(["eval", "--web", "--checkpoint", root, "--out", str(out),
                   "--web-examples", str(NUM)]) == 0
  assert "overall" in capsys.readouterr().out
  report = json.loads((out / "report.json").read_text())
  assert report["format"] == web_eval.REPORT_FORMAT
  assert sum(r["num_examples"] for r in report["types"].values()) == NUM
  toy_chance = {"color": 1 / 6, "shape": 1 / 3, "position": 1 / 9}  # every toy answer
  assert set(toy_chance) <= set(report["types"])
  for name, r in report["types"].items():
    assert r["chance"] == pytest.approx(toy_chance.get(name, 1 / r["num_candidates"]))
    assert 0 <= r["exact_match"] <= 1
    assert (r["multiple_choice"] is None) == (name == "caption")
    assert r["candidates"] == ([] if name == "caption" else sorted(r["candidates"]))
  assert report["data"]["seed"] == web_eval.heldout_seed(TOY["seed"])
  assert report["data"]["train_seeds"] == [TOY["seed"]]
  assert report["plots"] == ["web_eval.png"]
  assert os.path.getsize(out / "web_eval.png") > 1000
  lines = (out / "examples.jsonl").read_text().splitlines()
  assert len(lines) == NUM and "generated" in json.loads(lines[0])
  assert cli.main(["eval", "--web", "--env", "toy_reach", "--checkpoint", root, "--out",
                   str(tmp_path / "o2")]) == 2
  assert "--env is for the other evals" in capsys.readouterr().err
  assert cli.main(["eval", "--web-examples", "5", "--checkpoint", root, "--out",
                   str(tmp_path / "o3")]) == 2
  assert "--web-examples is for --web" in capsys.readouterr().err


def test_web_eval_fn_and_trainer_hook(ckpt, tmp_path):
  _, params, meta = ckpt
  config = U.tiny_config(num_steps=4, log_every=2, checkpoint_every=0, web_eval_every=3,
                         web_eval_examples=NUM, async_checkpointing=False)
  config.mesh.fsdp = 1  # one device: the train step compiles faster
  config.data = {"web_sources": (TOY,)}
  metrics = web_eval.make_web_eval_fn(config)(params, meta)
  assert {"web_eval/exact_match", "web_eval/mc_accuracy"} <= set(metrics)
  assert all(0 <= v <= 1 for v in metrics.values())
  with pytest.raises(VlaxError, match="has no web sources"):
    web_eval.make_web_eval_fn(U.tiny_config(data={"web_sources": ()}))
  with pytest.raises(VlaxError, match="web_eval_every"):
    check_train_config(U.tiny_config(web_eval_every=-1))

  calls = []

  def fake(p, metadata):
    calls.append(sorted(metadata))
    return {"web_eval/exact_match": 0.25}
  trainer.train(config, str(tmp_path / "run"), data_iterator_fn=U.synthetic_data_fn(),
                web_eval_fn=fake,
                mesh=mesh_lib.mesh_from_config(config.mesh, devices=jax.devices()[:1]))
  assert len(calls) == 2 and "config" in calls[0]  # steps 3 and 4 (the last)
  rows = U.read_jsonl(tmp_path / "run" / "metrics.jsonl")
  logged = [r["step"] for r in rows if "web_eval/exact_match" in r]
  assert logged == [4]  # step 3's scores join the next log line (step 4)
