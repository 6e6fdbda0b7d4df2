"""A jitted step that knows its own arguments, and the update of the LM-style stages.

A builder takes the models (`Model`: concrete params in a run, `jax.ShapeDtypeStruct` leaves
in `plan`) and the mesh and returns a `Step`: the jitted function, with explicit input
shardings, and `spec(width, ...)`, the abstract arguments of one call on a batch `width`
tokens wide. The stages place their batches with the step's own shardings, so what a run
passes is, leaf for leaf, what `plan` lowers; `recording()` collects the runtime's calls so
a test can compare (`tests/test_methods.py`, `tests/test_rl_stage.py`). The RL steps are
built in `pipeline/steps.py`.
"""

import contextlib
import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from dgpo_jax.parallel import sharding
from dgpo_jax.train import lm

_RECORD: Optional[list] = None


@dataclasses.dataclass
class Model:
  """A model on the mesh: its config, graphdef, params (pure dict; abstract in `plan`),
  their shardings, and the tokenizer it reads (None where only its numbers matter). Every
  builder returns one: `setup.build_model`, `setup.load_pretrained`, `prepare.run`,
  `evaluate_stage.load_checkpoint`."""
  cfg: object
  graphdef: object
  params: dict
  shardings: dict
  tokenizer: object = None

  def abstract(self) -> dict:
    return abstract(self.params, self.shardings)


def abstract(tree, shardings):
  """`tree`'s leaves as ShapeDtypeStructs carrying `shardings`."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree,
                      shardings)


def _leaf_signature(x):
  sh = getattr(x, "sharding", None)
  spec = None
  if isinstance(sh, jax.sharding.NamedSharding):
    spec = tuple(sh.spec)
    while spec and spec[-1] is None:  # P("data") and P("data", None) place alike
      spec = spec[:-1]
  return (tuple(x.shape), str(x.dtype), spec)


def signature(args):
  """(shape, dtype, partition spec or None) of every array among a call's arguments."""
  return jax.tree.map(_leaf_signature, args)


@contextlib.contextmanager
def recording():
  """Collects `(step name, signature of its arguments)` for every `Step` call inside."""
  global _RECORD
  prev, _RECORD = _RECORD, []
  try:
    yield _RECORD
  finally:
    _RECORD = prev


@dataclasses.dataclass
class Step:
  """A jitted step and the abstract arguments of one call (`spec(width, ...)`)."""
  name: str
  fn: Callable
  spec: Callable[..., tuple]
  batch_sh: Optional[dict] = None  # how the stage places the step's batch
  select: Optional[Callable] = None  # (rows, idx) -> a mini-batch placed as `batch_sh`

  def __call__(self, *args):
    if _RECORD is not None:
      _RECORD.append((self.name, signature(args)))
    return self.fn(*args)

  def lower(self, *spec_args, **spec_kw):
    return self.fn.lower(*self.spec(*spec_args, **spec_kw))


def sds(shape, dtype, sh):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=sh)


# The fields of a batch of masked targets (SFT, KD) and their ranks; `step` is TAID's clock,
# `lam` the KL weight λ (float32, one per row), an input so every λ runs one program.
KD_FIELDS = {"tokens": 2, "mask": 2, "loss_mask": 2, "loss_idx": 2, "step": 1, "lam": 1}
# ... and with `kd.cache_teacher`, the teacher's hidden states at the loss positions.
KD_CACHED_FIELDS = dict(KD_FIELDS, teacher_h=3)


def train_update(name, model: Model, tx, mesh, loss_fn, fields: dict, rows: int,
                 frozen: Optional[Model] = None, rules=sharding.DEFAULT_RULES):
  """The update of an LM-style stage (`lm.make_update`) and its train-state layout.

  Args:
    fields: batch field → rank ([rows] or [rows, width]); every one int32, rows sharded,
      but `lam` (float32) and `teacher_h` ([rows, loss tokens, the frozen model's width],
      float32).
    frozen: the model the loss reads untrained (the teacher in KD and GKD).
  Returns:
    (Step `(state, batch, rng, frozen) -> (state, metrics)`, state shardings, state shape).
    `spec(width, loss_tokens)`: `width` columns of tokens, `loss_tokens` of loss_idx.
  """
  shape = jax.eval_shape(lambda p: lm.init_state(p, tx), model.params)
  state_sh = lm.state_shardings(tx, shape, model.shardings, mesh)
  batch_sh = batch_shardings(mesh, fields, rules)
  fn = lm.make_update(model.graphdef, tx, state_sh, batch_sh, loss_fn,
                      frozen.shardings if frozen is not None else None)

  def spec(width: int, loss_tokens: int = 0):
    k = loss_tokens or width - 1
    cols = {"loss_idx": k}
    batch = {name: sds((rows, cols.get(name, width))[:nd],
                       jnp.float32 if name == "lam" else jnp.int32, batch_sh[name])
             for name, nd in fields.items() if name != "teacher_h"}
    if "teacher_h" in fields:  # the frozen teacher's cached states at the loss positions
      batch["teacher_h"] = sds((rows, k, frozen.cfg.d_model), jnp.float32,
                               batch_sh["teacher_h"])
    return (abstract(shape, state_sh), batch, jax.random.key(0),
            frozen.abstract() if frozen is not None else None)

  return Step(name, fn, spec, batch_sh), state_sh, shape


def place(host: dict, step_shardings: dict) -> dict:
  """A host batch as global arrays with the shardings a step was built for."""
  return {k: sharding.global_array(v, step_shardings[k]) for k, v in host.items()}


def batch_shardings(mesh, fields: dict, rules=sharding.DEFAULT_RULES) -> dict:
  return {k: sharding.batch_sharding(mesh, nd, rules) for k, nd in fields.items()}
