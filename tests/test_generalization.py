"""benchmarks.generalization's grid listing and query figures on hand-made rollouts."""

import os

import pytest

from benchmarks import generalization
from dgpo_jax.rollout.engine import Trajectory


def test_cells_are_the_grid_in_size_order(tmp_path):
  for d in ("t128x4x384_s96x3x288", "t96x3x288_s48x2x144", "t128x4x384_s48x2x144", "logs",
            "t96x3x288_s32x1x96", "xla_cache"):
    (tmp_path / d).mkdir()
  got = [(t, s) for t, s, _ in generalization.cells(str(tmp_path))]
  assert got == [("96x3x288", "32x1x96"), ("96x3x288", "48x2x144"),
                 ("128x4x384", "48x2x144"), ("128x4x384", "96x3x288")]


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


def test_stage_dir_takes_the_name_its_seed_suffix_or_a_unique_prefix(tmp_path):
  for d in ("kd-ce_fkl-lam1-correct-allq-t0", "kd-ce_fkl-lam1-correct-allq-t0-after-rl-dgpo",
            "kd-ce_fkl-lam0-correct-allq-t0-s1", "rl-dgpo"):
    (tmp_path / "checkpoints" / d).mkdir(parents=True)
  get = lambda stage, seed=0: os.path.basename(
      generalization.stage_dir(str(tmp_path), stage, seed))
  assert get("kd-ce_fkl-lam1-correct-allq-t0") == "kd-ce_fkl-lam1-correct-allq-t0"
  assert get("kd-ce_fkl-lam0-correct-allq-t0", 1) == "kd-ce_fkl-lam0-correct-allq-t0-s1"
  assert get("rl-") == "rl-dgpo"
  with pytest.raises(SystemExit, match="3 start with it"):
    get("kd")
