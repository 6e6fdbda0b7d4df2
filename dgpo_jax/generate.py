"""Generate text from a model: `python -m dgpo_jax.generate --model=smollm2-135m --prompt=...`.

Greedy by default on the raw prompt; `--chat` wraps it in the model's chat template,
`--temperature`/`--top_p` sample instead.
"""

import sys
import time

from absl import app, flags

flags.DEFINE_string("model", "smollm2-135m", "Model name, HF checkpoint directory or .gguf file.")
flags.DEFINE_string("prompt", None, "Prompt text.", required=True)
flags.DEFINE_integer("max_new_tokens", 32, "Tokens to generate.")
flags.DEFINE_bool("chat", False, "Wrap the prompt in the model's chat template.")
flags.DEFINE_float("temperature", 0.0, "0 = greedy; otherwise sampling temperature.")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16"], "Param/compute dtype.")
FLAGS = flags.FLAGS


def main(argv):
  from dgpo_jax.utils import cli
  text, n, dt, path = cli.run(_generate, argv)
  print(text)
  print(f"[generate] {n} tokens in {dt:.2f}s (incl. compile) from {path}", file=sys.stderr)


def _generate():
  import jax

  from dgpo_jax.models import registry
  from dgpo_jax.models.sampler import Sampler, SamplingParams
  from dgpo_jax.utils import shapes
  from dgpo_jax.utils.errors import fail
  lm = registry.load(FLAGS.model, param_dtype=FLAGS.param_dtype)
  tok = lm.tokenizer
  ids = tok.encode(tok.apply_chat(FLAGS.prompt) if FLAGS.chat else FLAGS.prompt)
  if not ids:
    fail("--prompt encodes to no tokens")
  graphdef, params = registry.place_params(lm.cfg, lm.params)
  sampler = Sampler(graphdef, params, cache_size=shapes.pow2(len(ids) + FLAGS.max_new_tokens),
                    pad_id=tok.pad_id)
  sp = (SamplingParams(greedy=True) if FLAGS.temperature == 0 else
        SamplingParams(temperature=FLAGS.temperature, top_p=FLAGS.top_p))
  t0 = time.time()
  res = sampler.generate([ids], FLAGS.max_new_tokens, jax.random.key(FLAGS.seed), sp,
                         stop_seqs=[[e] for e in lm.cfg.eos_ids] if FLAGS.chat else ())
  dt = time.time() - t0
  n = int(res.num_tokens[0])
  return tok.decode(res.tokens[0, :n].tolist(), skip_special=FLAGS.chat), n, dt, lm.path


if __name__ == "__main__":
  app.run(main)
