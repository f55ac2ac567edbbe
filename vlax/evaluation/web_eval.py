"""Held-out web (VQA) evaluation: does a checkpoint still answer what it co-trained on?

Co-training keeps web data in the mixture so that a VLA does not forget its
vision-language skills; this module measures that retention, per question type, with two
scores that separate *knowledge* loss from *format* loss (ChatVLA's "spurious
forgetting"):

  * exact match: greedy generation after the prompt (KV-cache `greedy_decode`, the
    Policy's decoder) up to eos; the answer counts when the model stopped (emitted eos
    within the longest gold answer + 1 tokens) and `normalize_answer` of the generated
    text equals that of the gold answer;
  * multiple choice: every answer of the question's type seen in the eval set (for toy
    data: every colour, shape or grid position, `TOY_ANSWERS`) is a candidate, scored by
    the summed log-probability of its tokens *and the eos* given image + prompt
    (teacher-forced, one jitted forward per batch; the eos keeps "top" from beating
    "top left" just for being a prefix of it); the argmax is the choice.
    Captions (free text) and types with more than `max_candidates` answers get exact
    match only.
Chance for a type is 1 / its number of candidates. The question type comes from the
prompt's template (`question_type`: "what color" -> color, "where is" -> position,
"what shape" -> shape, "caption" -> caption, anything else -> other).

Held-out data: the checkpoint's training config names its web sources
(config.data.web_sources). A "toy" source trains on `toy_examples(num_examples, size,
source.seed)`; the eval draws fresh examples from seed `heldout_seed(source.seed)` =
`seeds.fold(source.seed, HELDOUT_SALT)`, and drops every example whose image and question
occur among the training examples of any toy source (the 3x3 toy grid has only 162
one-object scenes, so about 30% of a fresh draw was seen in training): the eval set is
disjoint from training by content, not only by seed. Other source kinds have no held-out
split vlax can draw; pass your own `examples=` to `evaluate_web`.

Entry points: `evaluate_web` (`vlax eval --web`: OUT/report.json, OUT/web_eval.png,
OUT/examples.jsonl, a table) and `make_web_eval_fn` (the trainer's periodic
`web_eval/...` metrics, config.web_eval_every).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vlax.data import seeds as seeds_lib
from vlax.data import web as web_lib
from vlax.data.cotrain import default_data_config
from vlax.data.sequence import SequenceBuilder
from vlax.errors import VlaxError
from vlax.inference.policy import Policy, resize_image
from vlax.models.batch import ModelInputs
from vlax.models.vla import VLA

REPORT_FORMAT = "vlax-web-eval/1"
DEFAULT_NUM_EXAMPLES = 600
DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_CANDIDATES = 64
# Salt of the held-out toy seed: fold(train seed, salt) differs from the train seed for
# every seed below 2**43, and the content check makes the split disjoint regardless.
HELDOUT_SALT = 0x7E57
# Types scored by exact match only (free text: no closed candidate set).
FREE_TEXT_TYPES = ("caption",)
_TYPE_PATTERNS = (("caption", re.compile(r"^caption\b")),
                  ("color", re.compile(r"\bwhat colou?r\b")),
                  ("position", re.compile(r"\bwhere (is|are)\b")),
                  ("shape", re.compile(r"\bwhat shape\b")))
_ARTICLES = frozenset(("a", "an", "the"))
# Every answer a toy question type can have: the candidates of toy evals (chance is then
# 1/6 for color, 1/3 for shape and 1/9 for position, however few examples are drawn).
TOY_ANSWERS = {"color": tuple(web_lib.TOY_COLORS), "position": tuple(web_lib.TOY_POSITIONS),
               "shape": tuple(web_lib.TOY_SHAPES)}
PLOT_NAME = "web_eval.png"
EXAMPLES_NAME = "examples.jsonl"

# (params, ModelInputs, target_mask [B, L]) -> summed answer log-probs [B]
ScoreFn = Callable[[Any, ModelInputs, Any], Any]
# (ModelInputs, num_steps) -> greedy token ids [B, num_steps]
DecodeFn = Callable[[ModelInputs, int], np.ndarray]


# --------------------------------------------------------------------------- text


def question_type(prompt: str) -> str:
  """The question type a prompt's template asks (color, position, shape, caption, other)."""
  p = prompt.strip().lower()
  for name, pattern in _TYPE_PATTERNS:
    if pattern.search(p):
      return name
  return "other"


def normalize_answer(text: str) -> str:
  """VQA-style normal form: lower case, punctuation as spaces, no articles, one space."""
  words = re.sub(r"[^\w\s]", " ", text.lower()).split()
  return " ".join(w for w in words if w not in _ARTICLES)


# --------------------------------------------------------------------------- data


def web_sources_of(data_config: Mapping[str, Any] | None, where: str
                   ) -> list[web_lib.WebSource]:
  """The web sources a training data config used (its default when the key is absent);
  VlaxError naming `where` when there are none."""
  data = dict(data_config or {})
  raw = data["web_sources"] if "web_sources" in data else default_data_config().web_sources
  sources = []
  for i, s in enumerate(raw or ()):
    try:
      sources.append(web_lib.WebSource(**dict(s)))
    except TypeError as e:
      raise VlaxError(f"{where}: config.data.web_sources[{i}] is not a web source "
                      f"({e})") from None
  if not sources:
    raise VlaxError(f"{where} has no web sources (config.data.web_sources is empty): "
                    "there is no web data to score; the web eval needs a checkpoint "
                    "trained with web sources, or examples= from Python")
  return sources


def heldout_seed(train_seed: int) -> int:
  """The seed the eval draws toy examples from, for a source trained with `train_seed`."""
  return seeds_lib.fold(train_seed, HELDOUT_SALT)


def content_key(example: Mapping[str, Any]) -> bytes:
  """What makes two examples the same question: the image's pixels and the prompt."""
  img = np.ascontiguousarray(example["image"], np.uint8)
  return hashlib.sha1(img.tobytes() + b"\0" + str(example["prompt"]).encode()).digest()


def _toy_sources(sources: Sequence[web_lib.WebSource]
                 ) -> tuple[list[web_lib.WebSource], list[str]]:
  """(the toy sources, the names of the others); VlaxError when none is toy."""
  toy = [s for s in sources if s.kind == "toy"]
  skipped = [s.display_name for s in sources if s.kind != "toy"]
  if not toy:
    raise VlaxError(f"web sources {skipped} have no held-out split vlax can draw (only "
                    "'toy' sources generate fresh examples); call "
                    "vlax.evaluation.web_eval.evaluate_web(..., examples=[{image, prompt, "
                    "answer}, ...]) with your own held-out data")
  return toy, skipped


def heldout_examples(sources: Sequence[web_lib.WebSource], num: int, image_size: int,
                     seed: int | None = None
                     ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """`num` fresh toy examples none of whose (image, question) the toy sources trained on.

  Returns (examples, what was drawn: sources, seed, generated, dropped_seen_in_training,
  skipped_sources). seed: default `heldout_seed` of the first toy source.
  """
  if num < 1:
    raise VlaxError(f"web eval: number of examples must be >= 1, got {num}")
  toy, skipped = _toy_sources(sources)
  seen = {content_key(e) for s in toy
          for e in web_lib.toy_examples(s.num_examples, image_size, s.seed)}
  seed = heldout_seed(toy[0].seed) if seed is None else int(seed)
  generated = num
  while True:  # toy_examples(n, seed) is a prefix of toy_examples(2n, seed)
    drawn = web_lib.toy_examples(generated, image_size, seed)
    kept = [e for e in drawn if content_key(e) not in seen]
    if len(kept) >= num:
      break
    if generated >= 64 * num:
      raise VlaxError(f"web eval: only {len(kept)} of {generated} toy examples from seed "
                      f"{seed} are unseen in training; ask for fewer than {num}")
    generated *= 2
  last = kept[num - 1]
  used = next(i for i, e in enumerate(drawn) if e is last) + 1
  info = {"sources": [s.display_name for s in toy], "seed": seed,
          "train_seeds": [int(s.seed) for s in toy], "generated": used,
          "dropped_seen_in_training": used - num, "skipped_sources": skipped}
  return kept[:num], info


@dataclasses.dataclass
class EncodedExamples:
  """An eval set as the model reads it: images, prompt ids, gold answers, types."""
  images: np.ndarray  # uint8 [E, H, W, 3]
  prompt_ids: list[np.ndarray]  # bos + prompt + separator
  prompts: list[str]
  answers: list[str]
  types: list[str]
  extras: list[dict[str, Any]]  # other JSON-safe fields (toy: "colors"), for the records


def _extras(example: Mapping[str, Any]) -> dict[str, Any]:
  """An example's other JSON-safe fields (strings, numbers, lists of strings)."""
  out = {}
  for k, v in example.items():
    if k in ("image", "prompt", "answer"):
      continue
    if isinstance(v, (str, bool, int, float)):
      out[k] = v
    elif isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
      out[k] = list(v)
  return out


def encode_examples(builder: SequenceBuilder, examples: Sequence[Mapping[str, Any]]
                    ) -> EncodedExamples:
  """Web examples {image uint8 [H, W, 3], prompt, answer} -> what the scorers read: the
  image resized as training resizes it, prompt ids as `SequenceBuilder.web_ids` makes them
  for training, the question type."""
  if not examples:
    raise VlaxError("web eval: no examples")
  size = tuple(builder.config.image_size)
  images, prompt_ids, prompts, answers = [], [], [], []
  for i, ex in enumerate(examples):
    missing = [k for k in ("image", "prompt", "answer") if k not in ex]
    if missing:
      raise VlaxError(f"web eval example {i} lacks {missing} (needs image, prompt, answer)")
    img = np.asarray(ex["image"])
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
      raise VlaxError(f"web eval example {i}: image must be uint8 [H, W, 3], got "
                      f"{img.dtype} {tuple(img.shape)}")
    prompt, answer = str(ex["prompt"]), str(ex["answer"])
    images.append(resize_image(img, size))
    prompt_ids.append(builder.web_ids(prompt.encode(), b"")[0])
    prompts.append(prompt)
    answers.append(answer)
  return EncodedExamples(np.stack(images), prompt_ids, prompts, answers,
                         [question_type(p) for p in prompts],
                         [_extras(ex) for ex in examples])


def candidate_sets(types: Sequence[str], answers: Sequence[str],
                   max_candidates: int = DEFAULT_MAX_CANDIDATES,
                   known: Mapping[str, Sequence[str]] | None = None
                   ) -> dict[str, list[str]]:
  """Type -> its distinct answers in the eval set, plus `known` ones of the types present
  (first spelling of each normal form, sorted).

  Free-text types and types with more than `max_candidates` answers are left out (exact
  match only)."""
  by_type: dict[str, dict[str, str]] = {}
  for t, a in zip(types, answers):
    by_type.setdefault(t, {}).setdefault(normalize_answer(a), a)
  for t, extra in (known or {}).items():
    for a in extra if t in by_type else ():
      by_type[t].setdefault(normalize_answer(a), a)
  return {t: sorted(forms.values()) for t, forms in by_type.items()
          if t not in FREE_TEXT_TYPES and len(forms) <= max_candidates}


# --------------------------------------------------------------------------- model


def answer_logprob(logits: jax.Array, tokens: jax.Array, target_mask: jax.Array
                   ) -> jax.Array:
  """Summed log p(tokens[i]) over the positions i where target_mask is True, from
  logits[i - 1] (position i predicts token i + 1): [B, L, V], [B, L], [B, L] -> [B]."""
  logits = logits[:, :-1].astype(jnp.float32)
  target = tokens[:, 1:]
  picked = jnp.take_along_axis(logits, target[..., None], axis=-1)[..., 0]
  logp = picked - jax.nn.logsumexp(logits, axis=-1)
  return jnp.sum(jnp.where(target_mask[:, 1:], logp, 0.0), axis=-1)


def make_score_fn(logits_fn: Callable[[Any, ModelInputs], jax.Array]) -> ScoreFn:
  """jitted (params, inputs, target_mask) -> [B] answer log-probs of a logits function
  (params, ModelInputs) -> [B, L, V]."""

  @jax.jit
  def score(params, inputs, target_mask):
    return answer_logprob(logits_fn(params, inputs), inputs.tokens, target_mask)

  return score


@functools.lru_cache(maxsize=8)
def model_score_fn(model_config) -> ScoreFn:
  """`make_score_fn` of the VLA itself; cached per model config (compiled once per
  batch shape, also across the trainer's periodic evals)."""
  model = VLA(model_config)
  return make_score_fn(lambda params, inputs: model.apply({"params": params},
                                                          *inputs.args()))


def _row_batches(n: int, batch_size: int) -> list[tuple[np.ndarray, int]]:
  """(row indices, number of real rows) in batches of exactly batch_size, the last one
  padded with its last row: one compiled shape for every batch."""
  if batch_size < 1:
    raise VlaxError(f"web eval: batch_size must be >= 1, got {batch_size}")
  out = []
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n))
    out.append((np.concatenate([idx, np.full(batch_size - len(idx), idx[-1])]), len(idx)))
  return out


def _inputs(images: np.ndarray, rows: Sequence[np.ndarray], num_prefix: Sequence[int],
            length: int, num_images: int, pad_id: int) -> ModelInputs:
  """Web model inputs laid out as `SequenceBuilder.web_example`: the image in the first
  camera slot (the others zero and masked), text right-padded to `length`."""
  b, (h, w) = len(rows), images.shape[1:3]
  imgs = np.zeros((b, num_images, h, w, 3), np.float32)
  imgs[:, 0] = images.astype(np.float32) / 127.5 - 1.0
  tokens = np.full((b, length), pad_id, np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  pos = np.arange(length)[None]
  image_mask = np.zeros((b, num_images), bool)
  image_mask[:, 0] = True
  return ModelInputs(images=imgs, image_mask=image_mask, tokens=tokens,
                     input_mask=pos < np.asarray([len(r) for r in rows])[:, None],
                     prefix_mask=pos < np.asarray(num_prefix)[:, None])


def generate(decode_fn: DecodeFn, builder: SequenceBuilder, enc: EncodedExamples,
             num_images: int, batch_size: int) -> tuple[list[str], list[bool]]:
  """Greedy answers: (text before eos, whether eos came within the budget of the
  longest gold answer + 1)."""
  steps = max(len(builder.web_ids(b"", a.encode())[1]) for a in enc.answers) + 1
  length = max(len(p) for p in enc.prompt_ids)
  texts, finished = [], []
  for idx, n in _row_batches(len(enc.answers), batch_size):
    prompts = [enc.prompt_ids[i] for i in idx]
    ids = decode_fn(_inputs(enc.images[idx], prompts, [len(p) for p in prompts], length,
                            num_images, builder.pad_id), steps)
    for row in np.asarray(ids)[:n]:
      stop = np.nonzero(row == builder.eos_id)[0]
      texts.append(builder.text.decode(row[:stop[0]] if stop.size else row))
      finished.append(bool(stop.size))
  return texts, finished


def multiple_choice(score_fn: Callable[[ModelInputs, Any], Any], builder: SequenceBuilder,
                    enc: EncodedExamples, candidates: Mapping[str, Sequence[str]],
                    num_images: int, batch_size: int) -> list[str | None]:
  """Each example's highest-scoring candidate of its type (None: its type has none).

  score_fn(inputs, target_mask) -> [B] summed log-probs; the targets are a candidate's
  tokens and the eos after the example's prompt."""
  pairs, rows, targets = [], [], []  # (example, candidate), tokens, target flags
  for i, t in enumerate(enc.types):
    for c in candidates.get(t, ()):
      p, a = builder.web_ids(enc.prompts[i].encode(), c.encode())
      pairs.append((i, c))
      rows.append(np.concatenate([p, a, [builder.eos_id]]).astype(np.int32))
      targets.append((len(p), len(rows[-1])))
  choice: list[str | None] = [None] * len(enc.types)
  if not pairs:
    return choice
  length = max(len(r) for r in rows)
  scores = np.zeros(len(pairs), np.float64)
  for idx, n in _row_batches(len(pairs), batch_size):
    ex = np.asarray([pairs[k][0] for k in idx])
    batch_rows = [rows[k] for k in idx]
    inputs = _inputs(enc.images[ex], batch_rows, [targets[k][0] for k in idx], length,
                     num_images, builder.pad_id)
    pos = np.arange(length)[None]
    lo = np.asarray([targets[k][0] for k in idx])[:, None]
    hi = np.asarray([targets[k][1] for k in idx])[:, None]
    out = np.asarray(jax.device_get(score_fn(inputs, (pos >= lo) & (pos < hi))))
    scores[idx[:n]] = out[:n]
  best: dict[int, tuple[float, str]] = {}
  for (i, c), s in zip(pairs, scores):
    if i not in best or s > best[i][0]:  # ties: the first candidate (sorted order)
      best[i] = (float(s), c)
  for i, (_, c) in best.items():
    choice[i] = c
  return choice


# --------------------------------------------------------------------------- scores


def _mean(flags: Sequence[bool]) -> float | None:
  return float(np.mean(flags)) if len(flags) else None


def summarize(enc: EncodedExamples, texts: Sequence[str], finished: Sequence[bool],
              choices: Sequence[str | None], candidates: Mapping[str, Sequence[str]]
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """(scores per type and overall with chance levels, one record per example)."""
  records = []
  for i in range(len(enc.answers)):
    gold = normalize_answer(enc.answers[i])
    c = choices[i]
    records.append({
        **enc.extras[i], "prompt": enc.prompts[i], "answer": enc.answers[i],
        "type": enc.types[i], "generated": texts[i], "finished": bool(finished[i]),
        "exact_match": bool(finished[i]) and normalize_answer(texts[i]) == gold,
        "mc_choice": c, "mc_correct": None if c is None else normalize_answer(c) == gold})
  types: dict[str, Any] = {}
  distinct = {t: len({normalize_answer(r["answer"]) for r in records if r["type"] == t})
              for t in enc.types}
  for t in sorted(distinct):
    rs = [r for r in records if r["type"] == t]
    n_cand = len(candidates[t]) if t in candidates else distinct[t]
    types[t] = {
        "num_examples": len(rs), "exact_match": _mean([r["exact_match"] for r in rs]),
        "multiple_choice": (_mean([r["mc_correct"] for r in rs]) if t in candidates
                            else None),
        "chance": 1.0 / n_cand, "num_candidates": n_cand,
        "candidates": list(candidates.get(t, [])),
        "unfinished": sum(not r["finished"] for r in rs)}
  mc = [r for r in records if r["mc_correct"] is not None]
  overall = {
      "num_examples": len(records),
      "exact_match": _mean([r["exact_match"] for r in records]),
      "exact_match_chance": float(np.mean([types[r["type"]]["chance"] for r in records])),
      "num_multiple_choice": len(mc),
      "multiple_choice": _mean([r["mc_correct"] for r in mc]),
      "multiple_choice_chance": (float(np.mean([types[r["type"]]["chance"] for r in mc]))
                                 if mc else None),
      "unfinished": sum(not r["finished"] for r in records)}
  return {"types": types, "overall": overall}, records


def evaluate_policy(policy: Policy, examples: Sequence[Mapping[str, Any]], *,
                    batch_size: int = DEFAULT_BATCH_SIZE,
                    max_candidates: int = DEFAULT_MAX_CANDIDATES,
                    known_answers: Mapping[str, Sequence[str]] | None = None
                    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """Both scores of a Policy's model on web examples ({image uint8 [H, W, 3], prompt,
  answer}): `summarize`'s (result, records). known_answers: candidates per type beyond
  those in the examples (`TOY_ANSWERS` for toy data)."""
  builder = policy.builder
  num_images = len(policy.cameras) * int(policy.seq.window)
  if not num_images:
    raise VlaxError(f"{policy.where} has no camera slot (cameras=()): web examples need "
                    "one for their image")
  enc = encode_examples(builder, examples)
  candidates = candidate_sets(enc.types, enc.answers, max_candidates, known_answers)
  # Free generation: Policy.decode without dataset keys applies no action grammar.
  texts, finished = generate(policy.decode, builder, enc, num_images, batch_size)
  score = model_score_fn(policy.config)
  choices = multiple_choice(lambda inputs, mask: score(policy.params, inputs, mask),
                            builder, enc, candidates, num_images, batch_size)
  return summarize(enc, texts, finished, choices, candidates)


def training_metrics(result: Mapping[str, Any], prefix: str = "web_eval/"
                     ) -> dict[str, float]:
  """Flat scalars for metrics.jsonl: <prefix>exact_match, <prefix>mc_accuracy and the
  same per type (<prefix><type>/...); scores that do not apply are left out."""
  out = {}
  rows = [("", result["overall"])] + [(f"{t}/", r) for t, r in result["types"].items()]
  for name, r in rows:
    if r.get("exact_match") is not None:
      out[f"{prefix}{name}exact_match"] = float(r["exact_match"])
    if r.get("multiple_choice") is not None:
      out[f"{prefix}{name}mc_accuracy"] = float(r["multiple_choice"])
  return out


def make_web_eval_fn(config: Any, batch_size: int = DEFAULT_BATCH_SIZE
                     ) -> Callable[[Any, Mapping[str, Any]], dict[str, float]]:
  """The trainer's `web_eval_fn(params, metadata) -> {"web_eval/...": float}` for
  config.web_eval_examples held-out examples (drawn once, at the first call). The web
  sources are checked now, so a run without any stops before start-up."""
  num = int(config.web_eval_examples)
  sources = web_sources_of(config.get("data"), "config.web_eval_every: the run")
  _toy_sources(sources)  # a held-out split exists
  cache: dict[int, list[dict[str, Any]]] = {}

  def fn(params: Any, metadata: Mapping[str, Any]) -> dict[str, float]:
    policy = Policy.from_params(params, metadata)
    size = max(policy.seq.image_size)
    if size not in cache:
      cache[size] = heldout_examples(sources, num, size)[0]
    result, _ = evaluate_policy(policy, cache[size], batch_size=batch_size,
                                known_answers=TOY_ANSWERS)
    return training_metrics(result)

  return fn


# --------------------------------------------------------------------------- outputs


def plot_web_eval(report: Mapping[str, Any], path: str) -> str:
  """Bars per question type and overall: exact match and multiple choice, with each
  group's chance level as a black line."""
  groups = list(report["types"].items()) + [("overall", {
      "exact_match": report["overall"]["exact_match"],
      "multiple_choice": report["overall"]["multiple_choice"],
      "chance": report["overall"]["multiple_choice_chance"],
      "num_examples": report["overall"]["num_examples"]})]
  x = np.arange(len(groups))
  fig = Figure(figsize=(max(6.0, 1.2 * len(groups) + 2.0), 4.2))
  ax = fig.add_subplot(1, 1, 1)
  width = 0.38
  for j, (key, label) in enumerate((("exact_match", "exact match (generation)"),
                                    ("multiple_choice", "multiple choice (log-lik.)"))):
    y = [np.nan if g.get(key) is None else g[key] for _, g in groups]
    ax.bar(x + (j - 0.5) * width, y, width, label=label)
  chance = [np.nan if g.get("chance") is None else g["chance"] for _, g in groups]
  ax.hlines(chance, x - width, x + width, colors="black", lw=1.5,
            label="chance")
  ax.set_xticks(x)
  ax.set_xticklabels([f"{name}\n(n={g['num_examples']})" for name, g in groups], fontsize=8)
  ax.set_ylim(0, 1.05)
  ax.set_ylabel("accuracy")
  ax.legend(fontsize=8, loc="upper right")
  ax.set_title("held-out web data: exact match and multiple choice per question type",
               fontsize=10)
  fig.tight_layout()
  FigureCanvasAgg(fig)
  fig.savefig(path, dpi=80)
  return path


def format_table(report: Mapping[str, Any]) -> str:
  """type | n | exact match | multiple choice | chance; "-" where a score does not apply."""
  def cell(v):
    return "-" if v is None else f"{v:.3f}"
  o = report["overall"]
  rows = [["type", "n", "exact", "mc", "chance"]]
  rows += [[t, str(r["num_examples"]), cell(r["exact_match"]), cell(r["multiple_choice"]),
            cell(r["chance"])] for t, r in report["types"].items()]
  rows.append(["overall", str(o["num_examples"]), cell(o["exact_match"]),
               cell(o["multiple_choice"]), cell(o["multiple_choice_chance"])])
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = ["  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in
                                                 zip(r[1:], widths[1:])]) for r in rows]
  rule = "  ".join("-" * w for w in widths)
  return "\n".join([lines[0], rule] + lines[1:-1] + [rule, lines[-1]])


def write_web_report(report: dict[str, Any], records: Sequence[Mapping[str, Any]],
                     out: str) -> dict[str, Any]:
  """OUT/report.json (with "plots" and "examples" added), OUT/web_eval.png and
  OUT/examples.jsonl (one record per example: prompt, answer, generated, choices)."""
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise VlaxError(f"cannot create output directory {out!r}: {e.strerror or e}") from None
  report["plots"] = [os.path.relpath(plot_web_eval(report, os.path.join(out, PLOT_NAME)),
                                     out)]
  report["examples"] = EXAMPLES_NAME
  with open(os.path.join(out, EXAMPLES_NAME), "w") as f:
    for r in records:
      f.write(json.dumps(r, sort_keys=True) + "\n")
  with open(os.path.join(out, "report.json"), "w") as f:
    f.write(json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n")
  return report


def _load_policy(checkpoint: str, step: int | None) -> tuple[str, Policy]:
  if not checkpoint:
    raise VlaxError("--checkpoint is empty")
  if "://" not in checkpoint and not os.path.exists(checkpoint):
    raise VlaxError(f"checkpoint not found: {checkpoint}")
  if os.path.isdir(os.path.join(checkpoint, "checkpoints")):  # a run's workdir
    checkpoint = os.path.join(checkpoint, "checkpoints")
  return checkpoint, Policy.from_checkpoint(checkpoint, step=step)


def evaluate_web(checkpoint: str | None, out: str | None, *, step: int | None = None,
                 num_examples: int = DEFAULT_NUM_EXAMPLES, seed: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE,
                 max_candidates: int = DEFAULT_MAX_CANDIDATES, policy: Policy | None = None,
                 examples: Sequence[Mapping[str, Any]] | None = None,
                 print_fn: Callable[[str], Any] | None = print) -> dict[str, Any]:
  """Scores a checkpoint (or `policy`) on held-out web data; `vlax eval --web`.

  Without `examples`, draws `num_examples` held-out toy examples for the checkpoint's
  configured web sources (`heldout_examples`; `seed` overrides the held-out seed).
  Writes OUT/report.json, OUT/web_eval.png and OUT/examples.jsonl when `out` is given;
  returns the report: {"types": {type: {num_examples, exact_match, multiple_choice,
  chance, num_candidates, candidates, unfinished}}, "overall": {...}, "data", ...}.
  """
  if policy is None:
    checkpoint, policy = _load_policy(checkpoint, step)
  where = checkpoint or policy.where
  meta = policy.metadata
  if examples is None:
    sources = web_sources_of((meta.get("config") or {}).get("data"), str(where))
    examples, data = heldout_examples(sources, int(num_examples),
                                      max(policy.seq.image_size), seed)
    known = TOY_ANSWERS
  else:
    data, known = {"sources": ["examples given"], "num_examples": len(examples)}, None
  result, records = evaluate_policy(policy, examples, batch_size=int(batch_size),
                                    max_candidates=int(max_candidates), known_answers=known)
  report = {"format": REPORT_FORMAT, **result, "data": data,
            "metadata": {"checkpoint": checkpoint, "step": meta.get("step"),
                         "weights": meta.get("weights"), "batch_size": int(batch_size),
                         "max_candidates": int(max_candidates)}}
  if out is not None:
    write_web_report(report, records, out)
  if print_fn is not None:
    print_fn(format_table(report))
  return report
