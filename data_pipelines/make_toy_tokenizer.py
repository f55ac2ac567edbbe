"""Trains vlax's tiny debug SentencePiece model -> vlax/assets/toy_spm.model.

Deterministic (fixed corpus, one thread, no sampling). The corpus covers the toy robot
instructions, the toy web questions/answers (colours, shapes, positions), digits for
proprio rendered as text, and a few hundred generic English words. The special ids mirror
Gemma's layout (pad 0, eos 1, bos 2, unk 3); "\n" is a piece of its own (the prompt
separator) and unknown characters fall back to bytes, so any text is encodable.

Usage: python data_pipelines/make_toy_tokenizer.py [--out PATH] [--vocab_size 1000]
"""

from __future__ import annotations

import argparse
import io
import itertools
import pathlib

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "cyan",
          "magenta", "gray", "brown", "pink"]
SHAPES = ["square", "circle", "triangle", "block", "cube", "ball", "target", "object",
          "bowl", "cup", "plate", "drawer", "door", "box"]
POSITIONS = ["left", "right", "top", "bottom", "center", "top left", "top right",
             "bottom left", "bottom right", "middle", "front", "back"]
VERBS = ["reach", "move", "push", "pick up", "put", "place", "open", "close", "lift",
         "grasp", "touch", "go to", "slide", "rotate", "stack", "drop", "point at"]
GENERIC = """
a an the this that these those is are was were be been being have has had do does did
of in on at to for with from by about into over under between behind above below near
next and or but not no yes if then than so as it its they them their there here what
which who where when why how many much more most less few all some any each every one
two three four five six seven eight nine ten zero first second third last other same
different small large big little long short high low left right up down out off again
color colour shape position image picture photo scene robot arm gripper hand table floor
wall room kitchen sink counter shelf bottle can apple banana carrot spoon fork knife pan
pot lid towel cloth sponge toy tool marker pen paper book phone laptop chair window light
person man woman child dog cat bird car bus street tree grass sky water sun day night
caption describe answer question task action take should would could can will may must
please then now slowly quickly carefully gently toward towards away onto inside outside
there side corner edge surface top bottom middle center front back near far closer
farther state step time position velocity angle open closed empty full on off good bad
new old hot cold wet dry clean dirty bright dark light heavy soft hard round flat tall
what color is the shape where located see show there how many objects are in image
""".split()
TEMPLATES = [
    "What action should the robot take to {v} the {c} {s}?",
    "{v} the {c} {s}",
    "{v} the {s} to the {p}",
    "what color is the {s}?",
    "where is the {c} {s}?",
    "what shape is {c}?",
    "a {c} {s} on the {p}",
    "the {c} {s} is at the {p}",
    "caption en",
    "answer en where is the {c} {s}?",
]


def corpus_lines() -> list[str]:
  """The fixed, ordered training corpus."""
  lines = []
  for t, c, s, p, v in itertools.product(TEMPLATES, COLORS, SHAPES[:8], POSITIONS[:6],
                                         VERBS[:6]):
    lines.append(t.format(c=c, s=s, p=p, v=v))
  lines = sorted(set(lines))
  lines += [" ".join(GENERIC[i:i + 12]) for i in range(0, len(GENERIC), 12)]
  lines += [w.capitalize() + "." for w in GENERIC]
  lines += [" ".join(VERBS), " ".join(SHAPES), " ".join(COLORS), " ".join(POSITIONS)]
  lines += ["state " + " ".join(str((i * 37 + j) % 256) for j in range(8))
            for i in range(64)]
  lines += ["0 1 2 3 4 5 6 7 8 9 . , ; : ? ! ' \" ( ) - + = / %"]
  return lines


def train(vocab_size: int) -> bytes:
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  out = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(corpus_lines()), model_writer=out, model_type="bpe",
      vocab_size=vocab_size, hard_vocab_limit=False, character_coverage=1.0,
      byte_fallback=True, split_digits=True, user_defined_symbols=["\n"],
      normalization_rule_name="identity", add_dummy_prefix=False,
      remove_extra_whitespaces=False, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
      num_threads=1, shuffle_input_sentence=False, input_sentence_size=0,
      minloglevel=2)
  return out.getvalue()


def main() -> None:
  default_out = (pathlib.Path(__file__).resolve().parent.parent / "vlax" / "assets"
                 / "toy_spm.model")
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default=str(default_out))
  ap.add_argument("--vocab_size", type=int, default=1000)
  args = ap.parse_args()
  data = train(args.vocab_size)
  path = pathlib.Path(args.out)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  sp = spm.SentencePieceProcessor(model_proto=data)
  print(f"wrote {path} ({len(data)} bytes, vocab {sp.GetPieceSize()})")


if __name__ == "__main__":
  main()
