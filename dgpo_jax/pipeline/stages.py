"""Methods and ablations as typed stages.

`plan(config)` turns `config.method` (and `config.ablation`) into the list of stages a
run executes, in order, validated before any work starts:

  dgpo      TGO (correct only) → KD (CE + λ·KL) → RL, reward −β·KL(π_θ‖π_teacher) on wrong rows
  ppo       RL from the base student, reference-model KL on every row (Search-R1)
  sft_ppo   TGO → SFT (KD with λ = 0) → RL with reference KL
  kd        TGO → KD (Hinton);   distillm: TGO → skew forward KL;   taid: TGO → TAID
  gkd       on-policy JSD on the student's own samples
  grpo      group-normalized outcome advantages, no critic, reference KL (in the loss or reward)

Ablations of dgpo. Three are config fields under another name, and are applied as such
(`field`): uniform_kl is `ppo.kl_rows=all`, no_teacher_guidance is `ppo.kl_rows=none`,
kd_with_incorrect_tgo is `tgo.keep_incorrect=True`. Two change the stages: no_cold_start (no
TGO or KD) and inverted (RL first, then TGO → KD).
"""

import dataclasses
from typing import Optional, Union

from dgpo_jax.utils.errors import fail

METHODS = ("dgpo", "ppo", "sft_ppo", "kd", "distillm", "taid", "gkd", "grpo")
ABLATIONS = ("", "no_cold_start", "uniform_kl", "no_teacher_guidance", "inverted",
             "kd_with_incorrect_tgo")
# The ablations that are a config field set to another value.
ABLATION_FIELDS = {"uniform_kl": ("ppo.kl_rows", "all"),
                   "no_teacher_guidance": ("ppo.kl_rows", "none"),
                   "kd_with_incorrect_tgo": ("tgo.keep_incorrect", True)}
KD_LOSS = {"dgpo": "ce_fkl", "sft_ppo": "ce_fkl", "kd": "ce_fkl", "distillm": "skew_fkl",
           "taid": "taid"}


@dataclasses.dataclass(frozen=True)
class TGO:
  """The teacher's rollouts on training questions (correct ones, or all)."""
  keep_incorrect: bool
  kind = "tgo"


@dataclasses.dataclass(frozen=True)
class KD:
  """Distillation on the TGO trajectories (`distill.LOSSES`; λ = 0 is SFT)."""
  loss: str
  lam: float
  kind = "kd"


@dataclasses.dataclass(frozen=True)
class RL:
  """PPO (critic, GAE) or GRPO with a KL term to the teacher or the reference model."""
  kl_target: str  # "teacher" | "reference" (the policy the stage starts from)
  kl_rows: str  # "wrong" | "all" | "none": which rows the KL reward applies to
  advantage: Optional[str] = None  # None: `ppo.advantage`
  kl_loss_coef: Optional[float] = None  # None: no KL loss term
  kind = "rl"
  mode = "ppo"  # `rl_stage.run_rl`'s mode

  @property
  def kl_to_teacher(self) -> bool:
    """Whether the KL target is the teacher; else the policy the stage starts from (PPO's
    reference model: the SFT/KD student in sft_ppo, the base student in ppo/grpo)."""
    return self.kl_target == "teacher"

  def ppo_overrides(self) -> dict:
    """The `ppo_config` fields this stage sets."""
    over = dict(kl_rows=self.kl_rows, advantage=self.advantage,
                kl_loss_coef=self.kl_loss_coef)
    return {k: v for k, v in over.items() if v is not None}


@dataclasses.dataclass(frozen=True)
class GKD:
  """On-policy generalized JSD to the teacher on the student's own samples."""
  kind = "gkd"
  mode = "gkd"
  kl_to_teacher = True

  def ppo_overrides(self) -> dict:
    return {}


Stage = Union[TGO, KD, RL, GKD]


def field(config, name: str):
  """Config field `name` ("section.key") as the run uses it: the ablation's value when the
  ablation is that field, else the config's."""
  over = ABLATION_FIELDS.get(config.ablation)
  if over is not None and over[0] == name:
    return over[1]
  sec, key = name.split(".")
  return config[sec][key]


def _validate(config):
  m, a = config.method, config.ablation
  if m not in METHODS:
    fail(f"config.method={m!r}: expected one of {', '.join(METHODS)}")
  if a not in ABLATIONS:
    fail(f"config.ablation={a!r}: expected one of {', '.join(x for x in ABLATIONS if x)}")
  if a and m != "dgpo":
    fail(f"config.ablation={a!r} is an ablation of dgpo; config.method is {m!r}")
  if config.kd.lam < 0 or config.ppo.beta < 0 or config.ppo.kl_loss_coef < 0:
    fail("kd.lam, ppo.beta and ppo.kl_loss_coef must be ≥ 0")
  if config.ppo.grpo_kl not in ("loss", "reward"):
    fail(f"config.ppo.grpo_kl={config.ppo.grpo_kl!r}: expected loss or reward")
  every = config.kd.val_every
  if not isinstance(every, int) or isinstance(every, bool) or every < 1:
    fail(f"config.kd.val_every: {every!r} is not a number of epochs (an integer ≥ 1)")


def plan(config) -> list:
  """The method's stages, in order (see the module docstring)."""
  _validate(config)
  m, a = config.method, config.ablation
  tgo = TGO(field(config, "tgo.keep_incorrect"))
  kd = KD(KD_LOSS.get(m, "ce_fkl"), 0.0 if m == "sft_ppo" else config.kd.lam)
  ref_rl = RL("reference", "all")
  if m == "dgpo":
    teacher_rl = RL("teacher", field(config, "ppo.kl_rows"))
    if a == "no_cold_start":
      return [teacher_rl]
    if a == "inverted":
      return [ref_rl, tgo, kd]
    return [tgo, kd, teacher_rl]
  if m in ("kd", "distillm", "taid"):
    return [tgo, kd]
  if m == "sft_ppo":
    return [tgo, kd, ref_rl]
  if m == "ppo":
    return [ref_rl]
  if m == "grpo":
    if config.ppo.grpo_kl == "loss":  # the reference's use_kl_loss: no KL in the reward
      return [RL("reference", "none", "grpo", config.ppo.kl_loss_coef)]
    return [RL("reference", "all", "grpo")]
  return [GKD()]


def on_policy(plan):
  """The plan's RL or GKD stage, or None."""
  return next((s for s in plan if isinstance(s, (RL, GKD))), None)


def needs_teacher(plan) -> bool:
  return any(isinstance(s, (TGO, KD, GKD)) or (isinstance(s, RL) and s.kl_target == "teacher")
             for s in plan)
