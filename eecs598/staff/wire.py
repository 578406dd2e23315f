"""Plain data across the sandbox boundary: JSON for structure and numbers, safetensors for tensors.

What crosses, in both directions (the trusted grader's inputs to the sandbox, the sandbox's answers back):
``None``, ``bool``, ``int``, ``float``, ``str``, lists (tuples become lists), dicts with string keys (order
kept) and CPU tensors of the dtypes safetensors stores. Anything else is carried as :class:`Opaque`, its
type's name only, so a message can say "expected a torch.Tensor, got ndarray". Neither JSON nor
safetensors can run code when read, and :func:`decode` bounds everything (size, depth, node count,
string length): a malformed, oversized or truncated message raises :class:`MalformedAnswer`, which the
grader counts as a failed check, never as a crash.

A stream of messages (the sandbox's answer pipe) is a sequence of frames ``MAGIC + length (8 bytes, big
endian) + message``; a message is ``header length (8 bytes) + JSON header + safetensors blob``.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Tuple

import torch

__all__ = ["MalformedAnswer", "Opaque", "encode", "decode", "frame", "read_frames", "to_plain", "type_name"]

MAGIC = b"FCOS-ANSWER-1\n"
MAX_HEADER_BYTES = 4 << 20
MAX_NODES = 200_000
MAX_DEPTH = 16
MAX_STRING_CHARS = 10_000
_LENGTH = struct.Struct(">Q")


class MalformedAnswer(ValueError):
    """A message that is not what :func:`encode` writes, or exceeds a bound."""


@dataclass(frozen=True)
class Opaque:
    """A value the wire does not carry: only its type's name crosses."""

    type_name: str

    def __repr__(self) -> str:
        return f"<{self.type_name}>"


def type_name(value: Any) -> str:
    """The type's name of a decoded value (an :class:`Opaque` gives the original type's name)."""
    return value.type_name if isinstance(value, Opaque) else type(value).__name__


# ------------------------------------------------------------------------------------------------
# encoding (either side)
# ------------------------------------------------------------------------------------------------


def _tensor_key(value: torch.Tensor, tensors: Dict[str, torch.Tensor], seen: Dict[int, str]) -> Any:
    """The reference to ``value`` in ``tensors`` (the same tensor object once), or an :class:`Opaque`."""
    if id(value) in seen:
        return {"__tensor__": seen[id(value)]}
    try:
        plain = value.detach().to("cpu").contiguous().clone()
        if plain.is_complex() or plain.is_sparse or plain.is_quantized:
            raise TypeError("unsupported tensor")
        plain = torch.Tensor.as_subclass(plain, torch.Tensor)
    except Exception:  # meta, sparse, quantized, complex or a tensor subclass that refuses
        return {"__object__": f"Tensor[{getattr(value, 'dtype', '?')}]"}
    key = f"t{len(tensors)}"
    tensors[key] = plain
    seen[id(value)] = key
    return {"__tensor__": key}


def to_plain(value: Any, tensors: Dict[str, torch.Tensor], seen: Dict[int, str], depth: int = 0) -> Any:
    """``value`` as a JSON tree whose tensors are references into ``tensors`` (filled here)."""
    if depth > MAX_DEPTH:
        return {"__object__": "too deeply nested"}
    if value is None or isinstance(value, (bool, str)):
        return value[:MAX_STRING_CHARS] if isinstance(value, str) else value
    if isinstance(value, int):
        return value if abs(value) < 2 ** 63 else float(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, torch.Tensor):
        return _tensor_key(value, tensors, seen)
    if isinstance(value, (list, tuple)):
        return [to_plain(item, tensors, seen, depth + 1) for item in value]
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            return {"__object__": "dict with non-string keys"}
        return {"__dict__": [[key, to_plain(item, tensors, seen, depth + 1)] for key, item in value.items()]}
    if isinstance(value, Opaque):
        return {"__object__": value.type_name}
    return {"__object__": type(value).__name__}


def encode(value: Any) -> bytes:
    """One message holding ``value`` (see the module docstring)."""
    from safetensors.torch import save

    tensors: Dict[str, torch.Tensor] = {}
    header = json.dumps(to_plain(value, tensors, {}), allow_nan=False).encode("utf-8")
    blob = save(tensors) if tensors else b""
    return _LENGTH.pack(len(header)) + header + blob


def frame(message: bytes) -> bytes:
    """A message as one frame of a stream."""
    return MAGIC + _LENGTH.pack(len(message)) + message


# ------------------------------------------------------------------------------------------------
# decoding (the trusted side; nothing here trusts the bytes)
# ------------------------------------------------------------------------------------------------


class _Builder:
    """Rebuilds a JSON tree into values, counting nodes and checking every reference."""

    def __init__(self, tensors: Dict[str, torch.Tensor]):
        self.tensors = tensors
        self.nodes = 0

    def build(self, node: Any, depth: int = 0) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES or depth > MAX_DEPTH + 2:
            raise MalformedAnswer("the answer is too large or too deeply nested")
        if node is None or isinstance(node, (bool, int, float)):
            return node
        if isinstance(node, str):
            return node[:MAX_STRING_CHARS]
        if isinstance(node, list):
            return [self.build(item, depth + 1) for item in node]
        if isinstance(node, dict) and len(node) == 1:
            (kind, content), = node.items()
            return self._special(kind, content, depth)
        raise MalformedAnswer("the answer holds a value of an unknown form")

    def _special(self, kind: str, content: Any, depth: int) -> Any:
        if kind == "__tensor__" and isinstance(content, str) and content in self.tensors:
            return self.tensors[content]
        if kind == "__dict__" and isinstance(content, list):
            result = {}
            for pair in content:
                if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
                    raise MalformedAnswer("the answer holds a malformed dict")
                result[pair[0][:MAX_STRING_CHARS]] = self.build(pair[1], depth + 1)
            return result
        if kind == "__object__" and isinstance(content, str):
            return Opaque(content[:200])
        if kind == "__float__" and content in ("nan", "inf", "-inf"):
            return float(content)
        raise MalformedAnswer("the answer refers to a tensor it does not hold, or has an unknown form")


def decode(message: bytes) -> Any:
    """The value of one message; :class:`MalformedAnswer` for anything :func:`encode` would not write."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    if len(message) < _LENGTH.size:
        raise MalformedAnswer("truncated answer")
    (header_length,) = _LENGTH.unpack_from(message)
    if header_length > min(MAX_HEADER_BYTES, len(message) - _LENGTH.size):
        raise MalformedAnswer("the answer's header is truncated or too large")
    header = message[_LENGTH.size:_LENGTH.size + header_length]
    blob = message[_LENGTH.size + header_length:]
    try:
        tree = json.loads(header.decode("utf-8"))
        tensors = load(bytes(blob)) if blob else {}
    except (UnicodeDecodeError, ValueError, RecursionError, SafetensorError, OverflowError) as error:
        raise MalformedAnswer(f"the answer cannot be read ({type(error).__name__})") from None
    return _Builder(tensors).build(tree)


def read_frames(data: bytes) -> Iterator[Tuple[int, bytes]]:
    """``(offset, message)`` of every complete frame of a stream, in order; stops at the first damaged or
    truncated one (what follows it cannot be told apart from noise)."""
    offset = 0
    header = len(MAGIC) + _LENGTH.size
    while offset + header <= len(data):
        if data[offset:offset + len(MAGIC)] != MAGIC:
            return
        (length,) = _LENGTH.unpack_from(data, offset + len(MAGIC))
        start = offset + header
        if length > len(data) - start:
            return
        yield offset, data[start:start + length]
        offset = start + length


def decode_stream(data: bytes) -> List[Any]:
    """Every message of a stream that decodes; a message that does not is left out (its check then has no
    answer and fails)."""
    values = []
    for _, message in read_frames(data):
        try:
            values.append(decode(message))
        except MalformedAnswer:
            continue
    return values
