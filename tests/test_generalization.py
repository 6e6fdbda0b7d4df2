"""benchmarks.generalization's grid listing and query figures on hand-made rollouts."""

import pytest

from benchmarks import generalization
from configs import synthetic
from dgpo_jax.pipeline import scaling
from dgpo_jax.rollout.engine import Trajectory


def test_cells_are_the_grid_in_size_order():
  config = synthetic.get_config("scaling")
  assert generalization.cells(config) == [(t, s) for t in ("96x3x288", "128x4x384")
                                          for s in config.scaling.students]


def test_checkpoint_names_are_the_pipelines_own():
  cell = scaling.cell_config(synthetic.get_config("scaling"), "128x4x384", "96x3x288")
  name = lambda m, stage, seed=0: generalization.checkpoint_name(cell, m, stage, seed)
  # dgpo and kd share their KD stage; SFT→PPO's is λ = 0; a second seed's is suffixed
  assert name("dgpo", "kd") == name("kd", "kd") == "kd-ce_fkl-lam1-correct-allq-t0"
  assert name("sft_ppo", "kd") == "kd-ce_fkl-lam0-correct-allq-t0"
  assert name("dgpo", "kd", 1) == "kd-ce_fkl-lam1-correct-allq-t0-s1"
  assert name("dgpo", "rl", 1) == "rl-dgpo-s1"
  with pytest.raises(SystemExit, match="no rl stage"):
    name("kd", "rl")
  # the smoke grid's TGO keeps incorrect trajectories
  smoke = scaling.cell_config(synthetic.get_config("scaling_smoke"), "64x2x128", "16x1x32")
  assert generalization.checkpoint_name(smoke, "dgpo", "kd", 0) == "kd-ce_fkl-lam1-all-16q-t0"


def _row(question, first, gold):
  return {"question": question, "golden_answers": ["x"], "hops": [[first, "..."]],
          "gold_ids": [gold]}


def test_query_figures_count_the_subject_in_the_first_query_and_its_gold_passage():
  rows = [_row("Where was Kalan Ulkagal born?", "Kalan Ulkagal", "person-42"),
          _row("Where was Moen Ensano born?", "Moen Ensano", "person-7"),
          _row("Where was Ithsa Voro born?", "Ithsa Voro", "person-9"),
          # the first hop's name is not in the question (three-hop by a work's title elsewhere)
          _row("Who founded it?", "Viber Labs", "org-3")]
  trajs = [Trajectory("", [], queries=["kalan ulkagal"], doc_ids=[["person-42", "person-1"]]),
           Trajectory("", [], queries=["Kalan Ulmerve", "Moen Ensano"],
                      doc_ids=[["person-5"], ["person-7"]]),
           Trajectory("", []),  # answered without searching
           Trajectory("", [], queries=["Viber"], doc_ids=[["org-3"]])]
  got = generalization.query_figures(rows, trajs)
  assert got["named_rows"] == 3
  assert got["first_query_has_subject"] == pytest.approx(1 / 3)  # only the first row
  assert got["first_query_gold"] == pytest.approx(2 / 3)  # rows that searched: 1st and 4th
  none = generalization.query_figures([], [])
  assert none["first_query_has_subject"] is None and none["first_query_gold"] is None
