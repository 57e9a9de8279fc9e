"""Tensors on the wire: numpy arrays <-> `wmpo.v1.Tensor` messages and their JSON form.

One implementation of the wire rules, shared by clients and services:

- dtypes come from an allow-list (`ALLOWED_DTYPES`); anything else is refused
  rather than silently cast, so a float64 or object array is a clear error;
- raw data is C-order little-endian bytes whose length must equal
  prod(shape) * itemsize;
- sizes are checked against `max_bytes` *before* anything is allocated or
  decoded, so a hostile shape or base64 string cannot exhaust memory;
- uint8 RGB frames, (H, W, 3) or (N, H, W, 3), may travel as one PNG per frame;
- nothing is ever pickled.

The JSON form (HTTP) is `{"dtype": "float32", "shape": [2, 3], "data": "<base64>"}`
or, for frames, `{"dtype": "uint8", "shape": [N, H, W, 3], "png": ["<base64>", ...]}`.
Every failure is a `CodecError` (a `ValueError`) whose message names the tensor
and says what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from typing import Annotated, Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from wmpo_client.proto import tensor_pb2

DTypeName = Literal["uint8", "int32", "int64", "float16", "float32", "bool"]
# Order matters only for messages; the values are the proto enum numbers.
ALLOWED_DTYPES: dict[str, int] = {
    "uint8": tensor_pb2.DTYPE_UINT8,
    "int32": tensor_pb2.DTYPE_INT32,
    "int64": tensor_pb2.DTYPE_INT64,
    "float16": tensor_pb2.DTYPE_FLOAT16,
    "float32": tensor_pb2.DTYPE_FLOAT32,
    "bool": tensor_pb2.DTYPE_BOOL,
}
_DTYPE_BY_ENUM: dict[int, str] = {v: k for k, v in ALLOWED_DTYPES.items()}
_ALLOWED_LIST = ", ".join(ALLOWED_DTYPES)

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# No tensor in this project has more dimensions; a cap keeps shape checks cheap.
MAX_NDIM = 8
Encoding = Literal["raw", "png"]


class CodecError(ValueError):
    """A tensor could not be encoded or decoded; the message says why."""


def _fail(name: str, message: str) -> CodecError:
    return CodecError(f"tensor '{name}': {message}")


# ----------------------------------------------------------------- checks


def _as_array(value: Any) -> Any:
    # A numpy scalar (np.float32(1.0)) carries its dtype: send it as shape ().
    return np.asarray(value) if isinstance(value, np.generic) else value


def _check_array(array: Any, name: str, max_bytes: int) -> str:
    """Validate an array about to be encoded; return its canonical dtype name."""
    if not isinstance(array, np.ndarray):
        raise _fail(name, f"expected a numpy.ndarray, got {type(array).__name__}")
    dtype_name = array.dtype.name
    if dtype_name not in ALLOWED_DTYPES:
        raise _fail(name, f"dtype {dtype_name} not allowed; allowed: {_ALLOWED_LIST}")
    if array.dtype.byteorder == ">":
        # Refused, not swapped: a byte-swapped array usually means raw file
        # data read with the wrong dtype, which a silent swap would hide.
        raise _fail(
            name,
            f"big-endian dtype {array.dtype.str} not allowed; convert with "
            f".astype('<{array.dtype.str[1:]}')",
        )
    if array.ndim > MAX_NDIM:
        raise _fail(name, f"{array.ndim} dimensions, at most {MAX_NDIM} allowed")
    if array.nbytes > max_bytes:
        raise _fail(name, f"{array.nbytes} bytes exceeds the limit of {max_bytes} bytes")
    return dtype_name


def _expected_nbytes(name: str, dtype_name: str, shape: list[int], max_bytes: int) -> int:
    """Check a received shape and return the byte count it implies."""
    if len(shape) > MAX_NDIM:
        raise _fail(name, f"{len(shape)} dimensions, at most {MAX_NDIM} allowed")
    for i, dim in enumerate(shape):
        if dim < 0:
            raise _fail(name, f"shape {tuple(shape)} has a negative dimension at axis {i}")
    # Python ints: a hostile shape cannot overflow the product.
    nbytes = math.prod(shape) * np.dtype(dtype_name).itemsize
    if nbytes > max_bytes:
        raise _fail(
            name,
            f"shape {tuple(shape)} of {dtype_name} is {nbytes} bytes, over the limit of {max_bytes} bytes",
        )
    return nbytes


def require_finite(array: np.ndarray, name: str) -> None:
    """Refuse NaN or infinite values (e.g. in actions) with their count and first position."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise _fail(
            name, f"{int(bad.sum())} non-finite values (NaN or inf), first at index {first}"
        )


# -------------------------------------------------------------------- raw


def _to_little_endian_bytes(array: np.ndarray) -> bytes:
    # No-op on little-endian hosts; on a big-endian host native arrays are swapped.
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(order="C")


def _from_raw(
    name: str, dtype_name: str, shape: list[int], data: bytes, max_bytes: int
) -> np.ndarray:
    expected = _expected_nbytes(name, dtype_name, shape, max_bytes)
    if len(data) != expected:
        raise _fail(
            name,
            f"shape {tuple(shape)} of {dtype_name} needs {expected} bytes, got {len(data)}",
        )
    if dtype_name == "bool":
        raw = np.frombuffer(data, dtype=np.uint8)
        if raw.size and raw.max() > 1:
            raise _fail(name, "bool data must be bytes 0 or 1")
        return raw.astype(np.bool_).reshape(shape)
    wire = np.dtype(dtype_name).newbyteorder("<")
    # astype copies into a writable array in the host's byte order.
    return np.frombuffer(data, dtype=wire).astype(np.dtype(dtype_name)).reshape(shape)


# -------------------------------------------------------------------- PNG


def _frames_view(array: np.ndarray, name: str) -> np.ndarray:
    """(H, W, 3) or (N, H, W, 3) uint8 -> (N, H, W, 3), or a CodecError."""
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise _fail(
            name,
            f"PNG needs uint8 RGB frames (H, W, 3) or (N, H, W, 3), got {array.dtype.name} {array.shape}",
        )
    frames = array[None] if array.ndim == 3 else array
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise _fail(name, f"PNG frames must have a non-zero height and width, got {array.shape}")
    return frames


def encode_png_frames(array: np.ndarray, name: str = "frames") -> list[bytes]:
    """One PNG per frame of a uint8 (H, W, 3) or (N, H, W, 3) array."""
    out = []
    for frame in _frames_view(array, name):
        buf = io.BytesIO()
        # Level 1: most of the size win of PNG at a fraction of the CPU of the
        # default level 6, which matters inside a robot's control loop.
        Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="PNG", compress_level=1)
        out.append(buf.getvalue())
    return out


def decode_png_frames(
    pngs: list[bytes], shape: list[int], name: str = "frames", max_bytes: int = DEFAULT_MAX_BYTES
) -> np.ndarray:
    """Decode PNG frames into a uint8 array of `shape`, checking every frame against it."""
    if len(shape) not in (3, 4) or shape[-1] != 3:
        raise _fail(name, f"PNG tensors have shape (H, W, 3) or (N, H, W, 3), got {tuple(shape)}")
    _expected_nbytes(name, "uint8", shape, max_bytes)
    n = 1 if len(shape) == 3 else shape[0]
    height, width = shape[-3], shape[-2]
    if len(pngs) != n:
        raise _fail(name, f"shape {tuple(shape)} needs {n} PNG frames, got {len(pngs)}")
    compressed = sum(len(b) for b in pngs)
    if compressed > max_bytes:
        raise _fail(name, f"PNG data is {compressed} bytes, over the limit of {max_bytes} bytes")
    frames = np.empty((n, height, width, 3), dtype=np.uint8)
    for i, blob in enumerate(pngs):
        try:
            with Image.open(io.BytesIO(blob), formats=["PNG"]) as img:
                # Header checks before decoding pixels: a small PNG can claim a
                # huge canvas, so the size is compared before img.load().
                if img.size != (width, height):
                    raise _fail(
                        name,
                        f"PNG frame {i} is {img.size[0]}x{img.size[1]} (WxH), shape says {width}x{height}",
                    )
                if img.mode != "RGB":
                    raise _fail(name, f"PNG frame {i} has mode {img.mode!r}; expected 'RGB'")
                frames[i] = np.asarray(img)
        except CodecError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise _fail(name, f"PNG frame {i} is not a readable PNG ({exc})") from None
    return frames.reshape(shape)


# ------------------------------------------------------------------ proto


def to_proto(
    array: np.ndarray | np.generic,
    name: str = "tensor",
    encoding: Encoding = "raw",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tensor_pb2.Tensor:
    """Encode an array as a `wmpo.v1.Tensor` message (raw bytes or PNG frames)."""
    array = _as_array(array)
    dtype_name = _check_array(array, name, max_bytes)
    msg = tensor_pb2.Tensor(dtype=ALLOWED_DTYPES[dtype_name], shape=list(array.shape))
    if encoding == "png":
        msg.png.frames.extend(encode_png_frames(array, name))
    elif encoding == "raw":
        msg.data = _to_little_endian_bytes(array)
    else:
        raise _fail(name, f"encoding {encoding!r} unknown; use 'raw' or 'png'")
    return msg


def from_proto(
    msg: tensor_pb2.Tensor,
    name: str = "tensor",
    max_bytes: int = DEFAULT_MAX_BYTES,
    expect_dtype: DTypeName | None = None,
) -> np.ndarray:
    """Decode a `wmpo.v1.Tensor` message into a writable numpy array."""
    dtype_name = _DTYPE_BY_ENUM.get(msg.dtype)
    if dtype_name is None:
        label = (
            "unspecified"
            if msg.dtype == tensor_pb2.DTYPE_UNSPECIFIED
            else f"enum value {msg.dtype}"
        )
        raise _fail(name, f"dtype {label} not allowed; allowed: {_ALLOWED_LIST}")
    _check_expected_dtype(name, dtype_name, expect_dtype)
    shape = list(msg.shape)
    if msg.WhichOneof("payload") == "png":
        if dtype_name != "uint8":
            raise _fail(name, f"PNG payload needs dtype uint8, got {dtype_name}")
        return decode_png_frames(list(msg.png.frames), shape, name, max_bytes)
    # An unset payload reads as empty data: valid only for zero-element tensors.
    return _from_raw(name, dtype_name, shape, msg.data, max_bytes)


def _check_expected_dtype(name: str, got: str, expected: str | None) -> None:
    if expected is not None and got != expected:
        raise _fail(name, f"dtype must be {expected}, got {got}")


# ------------------------------------------------------------------- JSON


class TensorJSON(BaseModel):
    """The JSON form of a tensor, as used in HTTP request and response bodies."""

    model_config = ConfigDict(extra="forbid")

    dtype: DTypeName = Field(description="Element type, from the allow-list.")
    shape: list[Annotated[StrictInt, Field(ge=0)]] = Field(
        max_length=MAX_NDIM, description="Dimensions; [] is a scalar."
    )
    data: str | None = Field(
        default=None, description="Base64 of the raw C-order little-endian bytes."
    )
    png: list[str] | None = Field(
        default=None, description="Base64 PNG per frame; uint8 (H, W, 3) or (N, H, W, 3) only."
    )

    @model_validator(mode="after")
    def _one_payload(self) -> TensorJSON:
        if (self.data is None) == (self.png is None):
            raise ValueError("exactly one of 'data' or 'png' must be set")
        return self

    @classmethod
    def from_numpy(
        cls,
        array: np.ndarray,
        name: str = "tensor",
        encoding: Encoding = "raw",
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> TensorJSON:
        return cls.model_validate(to_json(array, name, encoding, max_bytes))

    def to_numpy(
        self,
        name: str = "tensor",
        max_bytes: int = DEFAULT_MAX_BYTES,
        expect_dtype: DTypeName | None = None,
    ) -> np.ndarray:
        return _decode_json(self, name, max_bytes, expect_dtype)


def _b64_size_check(n_chars: int, name: str, what: str, max_bytes: int) -> None:
    # 4 base64 characters carry 3 bytes: refuse before decoding an oversized string.
    if n_chars // 4 * 3 > max_bytes + 3:
        raise _fail(
            name, f"{what} is about {n_chars // 4 * 3} bytes, over the limit of {max_bytes} bytes"
        )


def _b64decode(text: str, name: str, what: str, max_bytes: int) -> bytes:
    _b64_size_check(len(text), name, what, max_bytes)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _fail(name, f"{what} is not valid base64 ({exc})") from None


def to_json(
    array: np.ndarray | np.generic,
    name: str = "tensor",
    encoding: Encoding = "raw",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict[str, Any]:
    """Encode an array as a JSON-ready dict (see `TensorJSON`)."""
    array = _as_array(array)
    dtype_name = _check_array(array, name, max_bytes)
    out: dict[str, Any] = {"dtype": dtype_name, "shape": list(array.shape)}
    if encoding == "png":
        out["png"] = [base64.b64encode(p).decode("ascii") for p in encode_png_frames(array, name)]
    elif encoding == "raw":
        out["data"] = base64.b64encode(_to_little_endian_bytes(array)).decode("ascii")
    else:
        raise _fail(name, f"encoding {encoding!r} unknown; use 'raw' or 'png'")
    return out


def from_json(
    obj: Any,
    name: str = "tensor",
    max_bytes: int = DEFAULT_MAX_BYTES,
    expect_dtype: DTypeName | None = None,
) -> np.ndarray:
    """Decode the JSON form (a dict or a `TensorJSON`) into a writable numpy array."""
    if not isinstance(obj, TensorJSON):
        dtype = obj.get("dtype") if isinstance(obj, dict) else None
        if isinstance(dtype, str) and dtype not in ALLOWED_DTYPES:
            # Same message as the proto path, rather than pydantic's generic one.
            raise _fail(name, f"dtype {dtype} not allowed; allowed: {_ALLOWED_LIST}")
        try:
            obj = TensorJSON.model_validate(obj)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}"
                for err in exc.errors()
            )
            raise _fail(name, problems) from None
    return _decode_json(obj, name, max_bytes, expect_dtype)


def _decode_json(t: TensorJSON, name: str, max_bytes: int, expect_dtype: str | None) -> np.ndarray:
    _check_expected_dtype(name, t.dtype, expect_dtype)
    if t.png is not None:
        if t.dtype != "uint8":
            raise _fail(name, f"PNG payload needs dtype uint8, got {t.dtype}")
        _b64_size_check(sum(len(p) for p in t.png), name, "PNG data", max_bytes)
        pngs = [_b64decode(p, name, f"PNG frame {i}", max_bytes) for i, p in enumerate(t.png)]
        return decode_png_frames(pngs, t.shape, name, max_bytes)
    # Shape first: an impossible shape is reported before decoding any data.
    _expected_nbytes(name, t.dtype, t.shape, max_bytes)
    data = _b64decode(t.data or "", name, "data", max_bytes)
    return _from_raw(name, t.dtype, t.shape, data, max_bytes)
