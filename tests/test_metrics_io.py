"""Metrics: JSONL rows and TensorBoard event files (written without TensorFlow)."""

import glob
import json

from dgpo_jax.utils.progress import MetricsWriter
from dgpo_jax.utils.tensorboard import crc32c, read_scalars


def test_crc32c_known_vector():
  assert crc32c(b"123456789") == 0xE3069283


def test_metrics_go_to_jsonl_and_tensorboard(tmp_path):
  m = MetricsWriter(str(tmp_path), "metrics_rl")
  m.write(1, em=0.5, kl=0.01, note="text is skipped in TensorBoard")
  m.write(2, em=0.75, kl=0.02)
  rows = [json.loads(l) for l in open(tmp_path / "metrics_rl.jsonl")]
  assert [r["step"] for r in rows] == [1, 2] and rows[1]["em"] == 0.75
  (path,) = glob.glob(str(tmp_path / "tensorboard" / "metrics_rl" / "events.out.tfevents.*"))
  got = read_scalars(path)
  assert (1, "em", 0.5) in got and (2, "em", 0.75) in got
  assert all(tag != "note" for _, tag, _ in got)
