"""The offline eval driver (`vlax eval`): a tiny random checkpoint and an oracle."""

import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from vlax.errors import VlaxError


def tiny_train_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict({"seed": 0, "batch_size": 8, "num_steps": 3})
  c.model = ml_collections.ConfigDict({"preset": "tiny", "dtype": "float32"})
  c.data = ml_collections.ConfigDict({
      "toy_episodes": 20, "toy_episode_len": 8, "toy_end_at_success": False,  # 8 frames
      "image_size": 32, "chunk_len": 2,
      "shuffle_buffer": 10, "action_tokenizer": "bins", "num_bins": 256,
      "max_len": 40, "web_sources": ()})
  return c


def make_tiny_checkpoint(root: str, workdir: str) -> dict:
  """Random tiny-preset params + the data pipeline's metadata, saved as step 1."""
  from vlax.checkpoints.format import save_checkpoint
  from vlax.data.cotrain import make_data_iterator
  from vlax.models.presets import get_preset
  from vlax.models.vla import VLA, example_inputs, init_params
  config = tiny_train_config()
  _, meta = make_data_iterator(config, process_index=0, process_count=1, workdir=workdir,
                               train=False)
  preset = get_preset("tiny")
  model_config = dataclasses.replace(
      preset, llm=dataclasses.replace(preset.llm, vocab_size=int(meta["vocab_size"])))
  model = VLA(model_config)
  params = init_params(model, jax.random.PRNGKey(0),
                       example_inputs(model_config, num_images=2, text_len=8))
  metadata = {**meta, "model": model_config.to_dict(),
              "config": json.loads(config.to_json_best_effort())}
  save_checkpoint(root, 1, jax.device_get(params), metadata)
  return metadata


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  base = tmp_path_factory.mktemp("eval_ckpt")
  workdir = str(base / "train")
  root = os.path.join(workdir, "checkpoints")
  meta = make_tiny_checkpoint(root, workdir)
  return {"root": root, "workdir": workdir, "meta": meta, "base": base}


def test_offline_eval_random_model_writes_report(ckpt):
  from vlax.evaluation.run import evaluate_offline
  out = str(ckpt["base"] / "out_model")
  lines = []
  result = evaluate_offline(ckpt["root"], out, max_batches=3, print_fn=lines.append)
  report = json.load(open(os.path.join(out, "report.json")))
  assert set(report["datasets"]) == {"toy_reach_a", "toy_reach_b"}
  assert report["metadata"]["step"] == 1
  assert report["num_batches"] == result["num_batches"] <= 3
  seen = [n for n, d in report["datasets"].items() if d["num_examples"]]
  assert seen
  for name in seen:
    d = report["datasets"][name]
    for key in ("token_accuracy", "l1_norm", "mse_norm", "l1_robot", "mse_robot"):
      assert d[key] is not None and np.isfinite(d[key]), (name, key)
    assert 0.0 <= d["token_accuracy"] <= 1.0
    assert d["num_action_tokens"] > 0
    assert len(d["per_dimension"]["l1_norm"]) == d["action_dim"]
    assert d["gripper_dims"] == [d["action_dim"] - 1]  # raw (unnormalized) gripper
  # A random model is far from perfect.
  assert report["overall"]["l1_norm"] > 0.05
  assert report["plots"] and all(os.path.exists(os.path.join(out, p))
                                 for p in report["plots"])
  assert any(p.startswith("timeseries_") for p in report["plots"])
  assert "toy_reach_a" in lines[0] or "toy_reach_a" in "\n".join(lines)


def test_oracle_predictions_give_zero_error(ckpt):
  """True action tokens through the driver's detokenize/unnormalize path: only the
  256-bin quantization error remains, per dataset, in both units; accuracy 1."""
  from vlax.evaluation.run import EvalData, eval_config, evaluate_offline, oracle_predict_fn
  meta = ckpt["meta"]
  data = EvalData(eval_config(meta), meta)
  out = str(ckpt["base"] / "out_oracle")
  result = evaluate_offline(
      ckpt["root"], out, predict_fn=oracle_predict_fn(data.builder.eos_id,
                                                      data.decode_steps),
      print_fn=None)
  half_bin = 1.0 / 256 + 1e-5
  for name in ("toy_reach_a", "toy_reach_b"):
    d = result["datasets"][name]
    assert d["num_examples"] > 0
    assert d["token_accuracy"] == 1.0
    assert d["l1_norm"] <= half_bin and max(d["per_dimension"]["l1_norm"]) <= half_bin
    # Robot units: the toy deltas span ~0.3, so errors stay tiny; gripper exact.
    assert d["l1_robot"] < 0.01
    assert d["gripper_accuracy"] == 1.0
  assert result["overall"]["num_examples"] == sum(
      d["num_examples"] for d in result["datasets"].values())
  # The whole held-out split was read (no max_batches): 1 val episode of 8 frames each.
  assert {d["num_examples"] for d in result["datasets"].values()} == {8}


def test_oracle_catches_wrong_statistics(ckpt):
  """If the driver unnormalized with another dataset's statistics, robot units would be
  off: check that robot-unit truth matches the raw toy actions' range."""
  from vlax.evaluation.run import EvalData, eval_config, evaluate_offline, oracle_predict_fn
  meta = ckpt["meta"]
  data = EvalData(eval_config(meta), meta)
  result = evaluate_offline(
      ckpt["root"], None, predict_fn=oracle_predict_fn(data.builder.eos_id,
                                                       data.decode_steps),
      print_fn=None, datasets=["toy_reach_b"], data_from=ckpt["root"])
  assert list(result["datasets"]) == ["toy_reach_b"]
  assert result["datasets"]["toy_reach_b"]["action_dim"] == 4
  assert result["datasets"]["toy_reach_b"]["l1_robot"] < 0.01


def test_make_eval_fn_scalars(ckpt):
  from vlax.evaluation.run import make_eval_fn
  from vlax.checkpoints.format import load_params
  params, meta = load_params(ckpt["root"])
  config = ml_collections.ConfigDict(meta["config"])
  fn = make_eval_fn(config, meta, ckpt["workdir"], max_batches=1)
  scalars = fn(params, 1)
  assert "eval/overall/l1_norm" in scalars and "eval/overall/token_accuracy" in scalars
  assert all(np.isfinite(v) for v in scalars.values())
  assert fn(params, 2) == scalars  # same batches, same params -> same numbers


def test_bad_inputs(ckpt, tmp_path):
  from vlax.evaluation.run import evaluate_offline
  with pytest.raises(VlaxError, match="not found"):
    evaluate_offline(str(tmp_path / "nope"), str(tmp_path / "o"))
  with pytest.raises(VlaxError, match="step 7"):
    evaluate_offline(ckpt["root"], str(tmp_path / "o"), step=7)
  with pytest.raises(VlaxError, match="toy_reach_zzz"):
    evaluate_offline(ckpt["root"], str(tmp_path / "o"),
                     overrides=["data.robot_datasets=toy_reach_a,toy_reach_zzz"])


def test_cli_eval(ckpt, capsys):
  from vlax.cli import main
  out = str(ckpt["base"] / "out_cli")
  rc = main(["eval", "--checkpoint", ckpt["root"], "--out", out, "--max-batches", "1"])
  assert rc == 0
  assert "overall" in capsys.readouterr().out
  assert os.path.exists(os.path.join(out, "report.json"))
  rc = main(["eval", "--checkpoint", ckpt["root"], "--out", out, "--step", "9"])
  assert rc == 2
  assert "step 9" in capsys.readouterr().err


def test_predict_fn_alignment(ckpt):
  """Teacher-forced accuracy uses logit i-1 for token i; greedy decoding starts right
  after the prompt (its first token is the teacher-forced prediction there)."""
  from vlax.checkpoints.format import load_params
  from vlax.evaluation.offline import _model_config
  from vlax.evaluation.run import EvalData, eval_config, make_predict_fn
  from vlax.models.vla import VLA
  params, meta = load_params(ckpt["root"])
  data = EvalData(eval_config(meta), meta)
  batch = next(data.batches(ckpt["workdir"], 4))
  config = _model_config(meta, data)
  out = make_predict_fn(config, data.decode_steps)(params, batch)
  logits = np.asarray(VLA(config).apply(
      {"params": params}, batch["images"], batch["image_mask"], batch["tokens"],
      batch["input_mask"], batch["prefix_mask"]))
  pred = logits.argmax(-1)
  amask = batch["action_token_mask"]
  for b in range(4):
    pos = np.nonzero(amask[b])[0]
    assert out["token_total"][b] == len(pos) > 0
    assert out["token_correct"][b] == np.sum(pred[b, pos - 1] == batch["tokens"][b, pos])
    prompt_len = int(np.sum(batch["prefix_mask"][b] & batch["input_mask"][b]))
    assert out["action_ids"][b, 0] == pred[b, prompt_len - 1]
  assert out["action_ids"].shape == (4, data.decode_steps)
