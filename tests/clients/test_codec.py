"""The tensor wire codec: round trips, PNG frames, and every refusal with its message."""

import base64
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from wmpo_client.codec import (
    ALLOWED_DTYPES,
    CodecError,
    TensorJSON,
    decode_png_frames,
    encode_png_frames,
    from_json,
    from_proto,
    require_finite,
    to_json,
    to_proto,
)
from wmpo_client.proto import tensor_pb2

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = "uint8, int32, int64, float16, float32, bool"


def _sample(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    if dtype == "bool":
        return np.asarray(rng.random(shape) > 0.5)
    if dtype.startswith("float"):
        # Values whose bytes are not palindromic, so a byte-order bug shows.
        return np.asarray(rng.standard_normal(shape) * 1000, dtype=dtype)
    info = np.iinfo(dtype)
    return np.asarray(rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True))


def _roundtrips(array: np.ndarray) -> list[np.ndarray]:
    proto = tensor_pb2.Tensor.FromString(to_proto(array, "t").SerializeToString())
    return [
        from_proto(proto, "t"),
        from_json(to_json(array, "t"), "t"),
        TensorJSON.from_numpy(array).to_numpy(),
    ]


@pytest.mark.parametrize("dtype", list(ALLOWED_DTYPES))
@pytest.mark.parametrize("shape", [(2, 3, 4), (5,), (), (0, 4)])
def test_raw_round_trip_every_allowed_dtype(dtype: str, shape: tuple[int, ...]) -> None:
    array = _sample(dtype, shape)
    for out in _roundtrips(array):
        assert out.dtype == array.dtype and out.shape == array.shape
        np.testing.assert_array_equal(out, array)
        assert out.flags.writeable and out.dtype.isnative


def test_non_contiguous_input_is_sent_in_c_order() -> None:
    array = np.arange(12, dtype=np.int32).reshape(3, 4).T  # a transposed view
    for out in _roundtrips(array):
        np.testing.assert_array_equal(out, array)


def test_wire_bytes_are_little_endian() -> None:
    msg = to_proto(np.array([1.0, -2.0], dtype=np.float32))
    assert msg.data == b"\x00\x00\x80\x3f\x00\x00\x00\xc0"
    assert msg.dtype == tensor_pb2.DTYPE_FLOAT32 and list(msg.shape) == [2]
    assert (
        to_json(np.array([258], dtype=np.int32))["data"]
        == base64.b64encode(b"\x02\x01\x00\x00").decode()
    )


def test_action_candidates_shape_round_trip() -> None:
    actions = _sample("float32", (4, 2, 8, 4))  # (N, chunks, K, 4)
    for out in _roundtrips(actions):
        np.testing.assert_array_equal(out, actions)


# -------------------------------------------------------------------- PNG


@pytest.mark.parametrize("shape", [(3, 6, 5, 3), (6, 5, 3)])
def test_png_round_trip_is_lossless(shape: tuple[int, ...]) -> None:
    frames = _sample("uint8", shape)
    proto = tensor_pb2.Tensor.FromString(
        to_proto(frames, "frames", encoding="png").SerializeToString()
    )
    assert proto.WhichOneof("payload") == "png"
    assert len(proto.png.frames) == (shape[0] if len(shape) == 4 else 1)
    assert all(blob.startswith(b"\x89PNG") for blob in proto.png.frames)
    js = to_json(frames, "frames", encoding="png")
    assert "data" not in js and len(js["png"]) == len(proto.png.frames)
    for out in [from_proto(proto, "frames"), from_json(js, "frames")]:
        assert out.dtype == np.uint8 and out.shape == frames.shape
        np.testing.assert_array_equal(out, frames)


def test_png_is_smaller_than_raw_for_smooth_images() -> None:
    y, x = np.mgrid[0:64, 0:64]
    frame = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)[None]
    assert sum(len(b) for b in encode_png_frames(frame)) < frame.nbytes / 4


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (
            np.zeros((2, 4, 4), np.float32),
            r"PNG needs uint8 RGB frames \(H, W, 3\) or \(N, H, W, 3\), got float32 \(2, 4, 4\)",
        ),
        (np.zeros((2, 4, 4, 4), np.uint8), r"got uint8 \(2, 4, 4, 4\)"),
        (np.zeros((4, 3), np.uint8), r"got uint8 \(4, 3\)"),
        (np.zeros((1, 0, 4, 3), np.uint8), r"non-zero height and width"),
    ],
)
def test_png_encode_refuses_non_rgb_frames(array: np.ndarray, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        to_proto(array, "frames", encoding="png")


def _png(width: int, height: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def test_png_decode_checks_each_frame_against_the_shape() -> None:
    with pytest.raises(CodecError, match=r"tensor 'f': PNG frame 1 is 4x3 \(WxH\), shape says 5x6"):
        decode_png_frames([_png(5, 6), _png(4, 3)], [2, 6, 5, 3], "f")
    with pytest.raises(CodecError, match=r"PNG frame 0 has mode 'RGBA'; expected 'RGB'"):
        decode_png_frames([_png(5, 6, "RGBA")], [1, 6, 5, 3], "f")
    with pytest.raises(CodecError, match=r"shape \(3, 6, 5, 3\) needs 3 PNG frames, got 2"):
        decode_png_frames([_png(5, 6)] * 2, [3, 6, 5, 3], "f")
    with pytest.raises(CodecError, match=r"PNG frame 0 is not a readable PNG"):
        decode_png_frames([b"\x89PNG definitely not"], [1, 6, 5, 3], "f")
    with pytest.raises(CodecError, match=r"PNG frame 0 is not a readable PNG"):
        jpeg = io.BytesIO()
        Image.new("RGB", (5, 6)).save(jpeg, format="JPEG")
        decode_png_frames([jpeg.getvalue()], [1, 6, 5, 3], "f")


def test_png_payload_needs_uint8() -> None:
    msg = tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[1, 6, 5, 3])
    msg.png.frames.append(_png(5, 6))
    with pytest.raises(CodecError, match="PNG payload needs dtype uint8, got float32"):
        from_proto(msg, "f")


def test_png_claiming_a_huge_canvas_is_refused_by_the_size_limit() -> None:
    # The limit is checked on the declared shape before any pixel is decoded.
    with pytest.raises(CodecError, match="over the limit of 1000 bytes"):
        decode_png_frames([_png(5, 6)], [1, 6000, 5000, 3], "f", max_bytes=1000)


# --------------------------------------------------------------- refusals


@pytest.mark.parametrize("dtype", ["float64", "int16", "uint16", "complex64", "object", "<U3"])
def test_disallowed_dtypes_are_refused_by_name(dtype: str) -> None:
    array = np.zeros(3, dtype=dtype)
    expected = f"tensor 'actions': dtype {array.dtype.name} not allowed; allowed: {ALLOWED}"
    for encode in (to_proto, to_json):
        with pytest.raises(CodecError) as err:
            encode(array, "actions")
        assert str(err.value) == expected


def test_disallowed_dtype_names_in_json_are_refused() -> None:
    for name in ["float64", ">f4", "<f4", "pickle"]:
        with pytest.raises(
            CodecError, match=f"tensor 'x': dtype {name} not allowed; allowed: {ALLOWED}"
        ):
            from_json({"dtype": name, "shape": [1], "data": "AAAAAA=="}, "x")


def test_unspecified_or_unknown_proto_dtype_is_refused() -> None:
    with pytest.raises(CodecError, match=f"dtype unspecified not allowed; allowed: {ALLOWED}"):
        from_proto(tensor_pb2.Tensor(shape=[1], data=b"\x00"), "x")
    with pytest.raises(CodecError, match="dtype enum value 99 not allowed"):
        from_proto(tensor_pb2.Tensor(dtype=99, shape=[1], data=b"\x00"), "x")


def test_non_arrays_are_refused_but_numpy_scalars_are_arrays() -> None:
    with pytest.raises(CodecError, match="tensor 'x': expected a numpy.ndarray, got list"):
        to_proto([1.0, 2.0], "x")  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="dtype float64 not allowed"):
        to_json(np.float64(1.0), "x")
    out = from_proto(to_proto(np.float32(2.5)))
    assert out.shape == () and out.dtype == np.float32 and out == 2.5


def test_big_endian_arrays_are_refused() -> None:
    with pytest.raises(
        CodecError, match=r"big-endian dtype >f4 not allowed; convert with .astype\('<f4'\)"
    ):
        to_proto(np.zeros(2, dtype=">f4"), "x")
    with pytest.raises(CodecError, match="big-endian"):
        to_json(np.zeros(2, dtype=">i8"), "x")
    # Explicit little-endian is fine.
    np.testing.assert_array_equal(
        from_proto(to_proto(np.ones(2, dtype="<f4"))), np.ones(2, np.float32)
    )


@pytest.mark.parametrize(("n_bytes", "shape"), [(11, [3, 4]), (13, [3, 4]), (0, [3])])
def test_inconsistent_byte_counts_are_refused(n_bytes: int, shape: list[int]) -> None:
    expected = 3 * 4 if shape == [3, 4] else 3
    msg = f"shape {tuple(shape)} of uint8 needs {expected} bytes, got {n_bytes}"
    with pytest.raises(CodecError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        from_proto(
            tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_UINT8, shape=shape, data=b"\x01" * n_bytes),
            "x",
        )
    with pytest.raises(CodecError, match="needs"):
        from_json(
            {
                "dtype": "uint8",
                "shape": shape,
                "data": base64.b64encode(b"\x01" * n_bytes).decode(),
            },
            "x",
        )


def test_float32_byte_count_uses_itemsize() -> None:
    with pytest.raises(CodecError, match=r"shape \(2,\) of float32 needs 8 bytes, got 4"):
        from_proto(
            tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[2], data=b"\x00" * 4), "x"
        )


def test_negative_dimensions_are_refused() -> None:
    with pytest.raises(CodecError, match=r"shape \(2, -1\) has a negative dimension at axis 1"):
        from_proto(tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_UINT8, shape=[2, -1]), "x")
    with pytest.raises(CodecError, match=r"shape.1: Input should be greater than or equal to 0"):
        from_json({"dtype": "uint8", "shape": [2, -1], "data": ""}, "x")


def test_too_many_dimensions_are_refused() -> None:
    with pytest.raises(CodecError, match="9 dimensions, at most 8 allowed"):
        from_proto(
            tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_UINT8, shape=[1] * 9, data=b"\x00"), "x"
        )


def test_oversized_tensors_are_refused_on_both_sides() -> None:
    array = np.zeros((16, 16), np.float32)  # 1024 bytes
    with pytest.raises(CodecError, match="tensor 'x': 1024 bytes exceeds the limit of 1000 bytes"):
        to_proto(array, "x", max_bytes=1000)
    msg = to_proto(array, "x")
    with pytest.raises(
        CodecError, match=r"shape \(16, 16\) of float32 is 1024 bytes, over the limit of 1000 bytes"
    ):
        from_proto(msg, "x", max_bytes=1000)
    with pytest.raises(CodecError, match="over the limit of 1000 bytes"):
        from_json(to_json(array, "x"), "x", max_bytes=1000)
    assert from_proto(msg, "x", max_bytes=1024).shape == (16, 16)


def test_a_hostile_shape_is_refused_before_allocation() -> None:
    # 2**62 elements would overflow int64 arithmetic and could never be allocated.
    msg = tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[2**31, 2**31], data=b"")
    with pytest.raises(CodecError, match="over the limit of"):
        from_proto(msg, "x")


def test_oversized_base64_is_refused_before_decoding() -> None:
    with pytest.raises(CodecError, match=r"data is about 3000 bytes, over the limit of 100 bytes"):
        from_json({"dtype": "uint8", "shape": [10], "data": "A" * 4000}, "x", max_bytes=100)
    with pytest.raises(CodecError, match="PNG data is about"):
        from_json(
            {"dtype": "uint8", "shape": [2, 1, 1, 3], "png": ["A" * 400] * 2}, "x", max_bytes=500
        )


def test_malformed_json_forms_are_refused() -> None:
    with pytest.raises(CodecError, match="tensor 'x': data is not valid base64"):
        from_json({"dtype": "uint8", "shape": [3], "data": "!!!!"}, "x")
    with pytest.raises(CodecError, match="exactly one of 'data' or 'png' must be set"):
        from_json({"dtype": "uint8", "shape": [3]}, "x")
    with pytest.raises(CodecError, match="exactly one of 'data' or 'png' must be set"):
        from_json({"dtype": "uint8", "shape": [1, 1, 1, 3], "data": "AAAA", "png": []}, "x")
    with pytest.raises(CodecError, match="pickle: Extra inputs are not permitted"):
        from_json({"dtype": "uint8", "shape": [0], "data": "", "pickle": "x"}, "x")
    with pytest.raises(CodecError, match="shape.0: Input should be a valid integer"):
        from_json({"dtype": "uint8", "shape": [True], "data": "AA=="}, "x")
    with pytest.raises(CodecError, match="tensor 'x': value: Input should be a valid dictionary"):
        from_json([1, 2, 3], "x")


def test_bool_bytes_must_be_zero_or_one() -> None:
    with pytest.raises(CodecError, match="bool data must be bytes 0 or 1"):
        from_proto(tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_BOOL, shape=[2], data=b"\x00\x02"), "x")


def test_expect_dtype() -> None:
    msg = to_proto(np.zeros((1, 2, 8, 4), np.float16), "candidates")
    with pytest.raises(CodecError, match="tensor 'candidates': dtype must be float32, got float16"):
        from_proto(msg, "candidates", expect_dtype="float32")
    with pytest.raises(CodecError, match="dtype must be float32, got float16"):
        from_json(to_json(np.zeros(2, np.float16)), "candidates", expect_dtype="float32")


def test_require_finite_names_count_and_first_position() -> None:
    actions = np.zeros((2, 3, 4), np.float32)
    actions[1, 2, 0] = np.nan
    actions[1, 2, 3] = np.inf
    with pytest.raises(
        CodecError,
        match=r"tensor 'actions': 2 non-finite values \(NaN or inf\), first at index \(1, 2, 0\)",
    ):
        require_finite(actions, "actions")
    require_finite(np.zeros(3, np.float32), "ok")
    require_finite(np.zeros(3, np.uint8), "ints are always finite")


def test_tensor_json_schema_lists_the_allowed_dtypes() -> None:
    schema = TensorJSON.model_json_schema()
    assert schema["properties"]["dtype"]["enum"] == list(ALLOWED_DTYPES)
    assert schema["additionalProperties"] is False


# ---------------------------------------------------------------- package


def test_client_package_never_imports_torch_or_the_core() -> None:
    code = (
        "import sys\n"
        "import wmpo_client, wmpo_client.codec\n"
        "from wmpo_client.proto import simulator_pb2, simulator_pb2_grpc, tensor_pb2\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m == 'wmpo' or m.startswith(('torch.', 'wmpo.')))\n"
        "assert not bad, bad\n"
    )
    # A fresh interpreter outside the repo root, so the core package is not on sys.path by accident.
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=ROOT / "clients" / "python", timeout=60
    )


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_shipped_generated_code_matches_the_protos(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    env = {**os.environ, "PYTHON": sys.executable, "PROTO_OUT": str(tmp_path)}
    subprocess.run(
        ["sh", str(ROOT / "scripts" / "gen_proto.sh")],
        check=True,
        env=env,
        timeout=60,
        capture_output=True,
    )
    shipped = ROOT / "clients" / "python" / "wmpo_client" / "proto"
    generated = sorted(p.name for p in tmp_path.iterdir())
    assert generated == sorted(
        p.name for p in shipped.iterdir() if p.name != "__init__.py" and p.is_file()
    )
    for name in generated:
        assert (tmp_path / name).read_text() == (shipped / name).read_text(), (
            f"{name} is stale: run scripts/gen_proto.sh"
        )
