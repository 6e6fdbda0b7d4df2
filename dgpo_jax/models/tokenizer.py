"""Tokenizers behind one small interface, and chat templates.

Backends: an HF `tokenizer.json` through `tokenizers`, a SentencePiece `.model` through
`sentencepiece`, and a byte-level BPE rebuilt from GGUF metadata (saved as tokenizer.json).
"""

import json
import os
from typing import Optional, Sequence

from dgpo_jax.utils.errors import fail


class Tokenizer:
  """encode/decode plus the special ids the sampler and rollout need."""

  vocab_size: int
  bos_id: Optional[int]
  eos_ids: tuple
  pad_id: int
  chat_format: Optional[str]
  source: str

  def encode(self, text: str) -> list[int]:
    raise NotImplementedError

  def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
    raise NotImplementedError

  def token_to_id(self, token: str) -> Optional[int]:
    raise NotImplementedError

  def id_to_token(self, i: int) -> Optional[str]:
    raise NotImplementedError

  def check_vocab(self, model_vocab: int, where: str = "model"):
    """Fails if a token id could index past the model's embedding."""
    if self.vocab_size > model_vocab:
      fail(f"tokenizer {self.source} has {self.vocab_size} tokens but {where} has "
           f"vocab_size={model_vocab}")

  def apply_chat(self, user_message: str, system: Optional[str] = None) -> str:
    """The prompt string for one user turn with the generation prompt appended."""
    return render_chat(self.chat_format, user_message, system)


class HFTokenizer(Tokenizer):
  """An HF fast tokenizer file (tokenizer.json)."""

  def __init__(self, path: str, bos_id=None, eos_ids=(), pad_id=None, chat_format=None):
    self.path = path
    from tokenizers import Tokenizer as _Tok
    if not os.path.isfile(path):
      fail(f"tokenizer file not found: {path}")
    try:
      self.tok = _Tok.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception on bad files
      fail(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0][:200]})")
    self.source = path
    self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
    self.bos_id = bos_id
    self.eos_ids = tuple(eos_ids)
    self.pad_id = pad_id if pad_id is not None else (self.eos_ids[0] if self.eos_ids else 0)
    self.chat_format = chat_format

  def encode(self, text):
    return self.tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids, skip_special=False):
    return self.tok.decode(list(ids), skip_special_tokens=skip_special)

  def token_to_id(self, token):
    return self.tok.token_to_id(token)

  def id_to_token(self, i):
    return self.tok.id_to_token(i)


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece `.model` file."""

  def __init__(self, path: str, eos_ids=None, chat_format=None):
    self.path = path
    import sentencepiece as spm
    if not os.path.isfile(path):
      fail(f"tokenizer file not found: {path}")
    self.sp = spm.SentencePieceProcessor()
    try:
      self.sp.Load(path)
    except (OSError, RuntimeError) as e:
      fail(f"{path}: not a valid SentencePiece model ({e})")
    self.source = path
    self.vocab_size = self.sp.GetPieceSize()
    self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
    eos = self.sp.eos_id()
    self.eos_ids = tuple(eos_ids) if eos_ids is not None else ((eos,) if eos >= 0 else ())
    self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else (
        self.eos_ids[0] if self.eos_ids else 0)
    self.chat_format = chat_format

  def encode(self, text):
    return self.sp.EncodeAsIds(text)

  def decode(self, ids, skip_special=False):
    ids = [int(i) for i in ids]
    if skip_special:
      ids = [i for i in ids if not self.sp.IsControl(i)]
    return self.sp.DecodeIds(ids)

  def token_to_id(self, token):
    i = self.sp.PieceToId(token)
    return None if i == self.sp.unk_id() and token != self.sp.IdToPiece(i) else i

  def id_to_token(self, i):
    return self.sp.IdToPiece(int(i)) if 0 <= i < self.vocab_size else None


def tokenizer_json_from_gguf(fields: dict) -> str:
  """Rebuilds a byte-level BPE `tokenizer.json` (as a string) from GGUF tokenizer metadata.

  Args:
    fields: GGUF metadata as {key: python value}.
  """
  from tokenizers import AddedToken, Tokenizer as _Tok, decoders, models, pre_tokenizers
  kind = fields.get("tokenizer.ggml.model")
  if kind != "gpt2":
    fail(f"GGUF tokenizer model {kind!r} is not supported (only byte-level BPE 'gpt2')")
  tokens = fields.get("tokenizer.ggml.tokens")
  if not tokens:
    fail("GGUF metadata has no tokenizer.ggml.tokens")
  types = fields.get("tokenizer.ggml.token_type", [1] * len(tokens))
  merges = [tuple(m.split(" ", 1)) for m in fields.get("tokenizer.ggml.merges", [])]
  vocab = {t: i for i, t in enumerate(tokens)}
  tok = _Tok(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
  pre = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
  if fields.get("tokenizer.ggml.pre") in ("smollm", "llama-bpe", "qwen2", "starcoder"):
    # These pre-tokenizers split digits one by one before the byte-level regex.
    pre.insert(0, pre_tokenizers.Digits(individual_digits=True))
  tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
  tok.decoder = decoders.ByteLevel()
  # Token type 3 = control (special) tokens: matched whole, never split by BPE.
  special = [AddedToken(t, special=True, normalized=False)
             for t, ty in zip(tokens, types) if ty == 3]
  tok.add_special_tokens(special)
  return tok.to_str()


# Chat formats. The ChatML ones differ in the default system message.
_CHATML_SYSTEM = {
    "qwen2.5": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    "smollm2": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "chatml": None,
}
CHAT_FORMATS = tuple(_CHATML_SYSTEM) + ("llama3", "plain")
# Llama-3.1/3.2 instruct templates print "Today Date: <date_string>": Llama-3.2's takes the
# date of the day it runs (strftime_now), which would make every prompt depend on the calendar;
# we render the templates' own fallback date, so prompts are reproducible.
LLAMA3_DATE = "26 Jul 2024"


def _llama3(user_message: str, system: Optional[str]) -> str:
  """The Llama-3.1/3.2 instruct template for one user turn and the generation prompt: BOS, a
  system header with the knowledge cutoff and date, the user message trimmed (`| trim`)."""
  head = lambda role: f"<|start_header_id|>{role}<|end_header_id|>\n\n"
  return ("<|begin_of_text|>" + head("system") + "Cutting Knowledge Date: December 2023\n"
          f"Today Date: {LLAMA3_DATE}\n\n{(system or '').strip()}<|eot_id|>" + head("user")
          + user_message.strip() + "<|eot_id|>" + head("assistant"))


def render_chat(fmt: Optional[str], user_message: str, system: Optional[str] = None) -> str:
  """Renders one user message with the generation prompt, as the model's template does.

  Formats: "qwen2.5" and "smollm2" (ChatML with each model's default system message),
  "chatml" (no system message unless given), "llama3" (Llama-3.1/3.2 instruct, BOS included,
  the date fixed to `LLAMA3_DATE`), "plain" (the message itself, for models trained without a
  template, like the synthetic world's).
  """
  if fmt in (None, "plain"):
    return user_message
  if fmt == "llama3":
    return _llama3(user_message, system)
  if fmt not in _CHATML_SYSTEM:
    fail(f"unknown chat format {fmt!r} (known: {', '.join(CHAT_FORMATS)})")
  system = system if system is not None else _CHATML_SYSTEM[fmt]
  out = f"<|im_start|>system\n{system}<|im_end|>\n" if system is not None else ""
  return out + f"<|im_start|>user\n{user_message}<|im_end|>\n<|im_start|>assistant\n"


def guess_chat_format(model_dir: str) -> Optional[str]:
  """Reads tokenizer_config.json's chat_template and recognizes Qwen2.5 / SmolLM2 ChatML and
  the Llama-3 header template."""
  f = os.path.join(model_dir, "tokenizer_config.json")
  if not os.path.isfile(f):
    return None
  with open(f) as fh:
    tpl = json.load(fh).get("chat_template") or ""
  if "You are Qwen" in tpl:
    return "qwen2.5"
  if "SmolLM" in tpl:
    return "smollm2"
  if "<|im_start|>" in tpl:
    return "chatml"
  if "<|start_header_id|>" in tpl:
    return "llama3"
  return None


def load_tokenizer(model_dir: str, bos_id=None, eos_ids=(), pad_id=None) -> Tokenizer:
  """The tokenizer stored in a model directory (tokenizer.json or tokenizer.model)."""
  fmt = guess_chat_format(model_dir)
  tj = os.path.join(model_dir, "tokenizer.json")
  if os.path.isfile(tj):
    return HFTokenizer(tj, bos_id=bos_id, eos_ids=eos_ids, pad_id=pad_id, chat_format=fmt)
  sp = os.path.join(model_dir, "tokenizer.model")
  if os.path.isfile(sp):
    return SentencePieceTokenizer(sp, eos_ids=eos_ids or None, chat_format=fmt)
  fail(f"{model_dir}: no tokenizer.json or tokenizer.model")
