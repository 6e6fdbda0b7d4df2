"""TensorBoard scalar event files without TensorFlow: TFRecord framing around hand-encoded
`Event{wall_time, step, Summary{Value{tag, simple_value}}}` protobufs. `read_scalars` parses
them back (tests; quick looks without TensorBoard installed)."""

import os
import socket
import struct
import time


def _crc32c_table():
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  c = 0xFFFFFFFF
  for b in data:
    c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
  return c ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
  c = crc32c(data)
  return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    b = n & 0x7F
    n >>= 7
    out.append(b | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(num: int, wire: int) -> bytes:
  return _varint((num << 3) | wire)


def _len_field(num: int, payload: bytes) -> bytes:
  return _field(num, 2) + _varint(len(payload)) + payload


def _event(step: int, wall: float, values: dict = None, file_version: str = None) -> bytes:
  ev = _field(1, 1) + struct.pack("<d", wall) + _field(2, 0) + _varint(max(int(step), 0))
  if file_version:
    ev += _len_field(3, file_version.encode())
  if values:
    summary = b"".join(_len_field(1, _len_field(1, tag.encode()) + _field(2, 5)
                                  + struct.pack("<f", float(v))) for tag, v in values.items())
    ev += _len_field(5, summary)
  return ev


def _record(data: bytes) -> bytes:
  header = struct.pack("<Q", len(data))
  return header + struct.pack("<I", _masked(header)) + data + struct.pack("<I", _masked(data))


class EventWriter:
  """Appends scalar summaries to `<logdir>/events.out.tfevents.<time>.<host>`."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    self.path = os.path.join(logdir, f"events.out.tfevents.{int(time.time())}."
                                     f"{socket.gethostname()}")
    with open(self.path, "ab") as f:
      f.write(_record(_event(0, time.time(), file_version="brain.Event:2")))

  def scalars(self, step: int, values: dict):
    vals = {k: v for k, v in values.items() if isinstance(v, (int, float))}
    if vals:
      with open(self.path, "ab") as f:
        f.write(_record(_event(step, time.time(), vals)))


def _read_varint(b: bytes, i: int):
  n = shift = 0
  while True:
    x = b[i]
    i += 1
    n |= (x & 0x7F) << shift
    shift += 7
    if not x & 0x80:
      return n, i


def _fields(b: bytes):
  i = 0
  while i < len(b):
    key, i = _read_varint(b, i)
    num, wire = key >> 3, key & 7
    if wire == 0:
      v, i = _read_varint(b, i)
    elif wire == 1:
      v, i = b[i:i + 8], i + 8
    elif wire == 5:
      v, i = b[i:i + 4], i + 4
    else:
      n, i = _read_varint(b, i)
      v, i = b[i:i + n], i + n
    yield num, v


def read_scalars(path: str) -> list:
  """[(step, tag, value)] from an event file; raises ValueError on a corrupt record."""
  out = []
  data = open(path, "rb").read()
  i = 0
  while i < len(data):
    header = data[i:i + 8]
    (n,) = struct.unpack("<Q", header)
    if struct.unpack("<I", data[i + 8:i + 12])[0] != _masked(header):
      raise ValueError(f"{path}: bad length checksum at byte {i}")
    body = data[i + 12:i + 12 + n]
    if struct.unpack("<I", data[i + 12 + n:i + 16 + n])[0] != _masked(body):
      raise ValueError(f"{path}: bad data checksum at byte {i}")
    i += 16 + n
    step = 0
    for num, v in _fields(body):
      if num == 2:
        step = v
      elif num == 5:
        for _, val in _fields(v):
          tag = value = None
          for f, x in _fields(val):
            if f == 1:
              tag = x.decode()
            elif f == 2:
              value = struct.unpack("<f", x)[0]
          out.append((step, tag, value))
  return out
