"""How array widths are rounded, in one place: jitted steps compile once per distinct shape,
so rows are padded to a few widths.

  pow2(n)          the smallest power of two ≥ n: KV caches, Pallas tiles
  pow2_or_1p5(n)   a power of two or 1.5× one: at most a third padding (rollout and RL
                   batch widths, encoder batches)
  round_up(n, m)   a multiple of m: length-grouped SFT/KD batches, TGO arrays
"""

import numpy as np


def pow2(n: int, minimum: int = 16) -> int:
  """Smallest power of two ≥ max(n, minimum)."""
  return max(minimum, 1 << max(0, int(n - 1).bit_length()))


def pow2_or_1p5(n: int, minimum: int = 16) -> int:
  """Smallest power of two or 1.5× power of two ≥ max(n, minimum): at most 1/3 padding."""
  b = pow2(n, minimum)
  return b * 3 // 4 if b >= 32 and b * 3 // 4 >= n else b


def round_up(n, multiple: int = 64):
  """`n` rounded up to a multiple of `multiple`, at least `multiple`; ints or arrays."""
  out = np.maximum(multiple, -(-np.asarray(n) // multiple) * multiple)
  return int(out) if np.ndim(out) == 0 else out
