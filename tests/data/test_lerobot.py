"""LeRobot v3 export and import: the layout LeRobot's tools expect (checked with lerobot-doctor),
round trips, and clear errors for malformed datasets."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wmpo.cli import main
from wmpo.data.episodes import Episode, EpisodeDataset, append_manifest, init_dataset, write_shard
from wmpo.data.lerobot import VideoSettings, export_lerobot, import_lerobot
from wmpo.errors import ConfigError, DatasetError

SIZE = 16
KEY = "observation.images.cam"
DOCTOR = Path(sys.executable).with_name("lerobot-doctor")


def frames(t: int, seed: int, size: int = SIZE) -> np.ndarray:
    """Smooth moving gradients with a little noise: what camera frames look like to a codec."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    out = []
    for i in range(t):
        base = np.stack([(x * 9 + i * 7) % 200, (y * 11 + seed * 5) % 220, (x + y) * 4 + i], -1)
        out.append(np.clip(base + 30 + rng.integers(0, 6, base.shape), 0, 255))
    return np.asarray(out, np.uint8)


def episode(t: int, seed: int, task: str = "push-v3", succeed: bool = True, stride: int = 1) -> Episode:
    rng = np.random.default_rng(seed)
    success = np.zeros(t + 1, bool)
    success[-1] = succeed
    meta = {"task": task, "instruction": f"do {task}", "seed": seed,
            "source": {"kind": "policy", "checkpoint_sha256": "ab" * 32, "temperature": 1.0}}
    if stride > 1:
        meta["frame_stride"] = stride
    return Episode(frames(t + 1, seed), rng.uniform(-1, 1, (t, 4)).astype(np.float32), success, meta)


def make_dataset(root: Path, shards: list[list[Episode]]) -> Path:
    init_dataset(root, SIZE, {"name": "cam"})
    for i, eps in enumerate(shards):
        write_shard(root / "data" / f"shard-{i:03d}.npz", eps)
    append_manifest(root, {"source": "test", "episodes": sum(len(s) for s in shards)})
    return root


def doctor(path: Path) -> dict:
    run = subprocess.run([str(DOCTOR), "check", "--json", str(path)], capture_output=True, text=True, timeout=120)
    return {c["name"]: c for c in json.loads(run.stdout)["checks"]}


def compare(a: Path, b: Path, max_abs: int) -> None:
    da, db = EpisodeDataset.load(a), EpisodeDataset.load(b)
    assert len(da) == len(db)
    for i in range(len(da)):
        ea, eb = da.episode(i), db.episode(i)
        assert ea.actions.dtype == eb.actions.dtype and ea.actions.tobytes() == eb.actions.tobytes()
        assert np.array_equal(ea.success, eb.success)
        assert ea.meta == eb.meta
        assert ea.frames.shape == eb.frames.shape
        assert np.abs(ea.frames.astype(int) - eb.frames.astype(int)).max() <= max_abs


def test_export_layout_passes_lerobot_doctor_and_round_trips(tmp_path):
    src = make_dataset(tmp_path / "wmpo", [[episode(5, 0), episode(3, 1, "door-open-v3", False)],
                                          [episode(4, 2)]])
    out = tmp_path / "lerobot"
    summary = export_lerobot(src, out, progress=False)
    assert summary == {**summary, "episodes": 3, "frames": 15, "tasks": 2, "fps": 80, "video_key": KEY}

    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 3 and info["total_frames"] == 15
    assert info["total_tasks"] == 2 and info["splits"] == {"train": "0:3"} and info["chunks_size"] == 1000
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    feats = info["features"]
    assert feats[KEY]["dtype"] == "video" and feats[KEY]["shape"] == [SIZE, SIZE, 3]
    assert feats[KEY]["info"]["video.pix_fmt"] == "yuv444p" and feats[KEY]["info"]["video.fps"] == 80
    assert feats["action"] == {"dtype": "float32", "shape": [4], "names": ["dx", "dy", "dz", "gripper"]}
    assert feats["success"]["dtype"] == "bool" and feats["index"]["dtype"] == "int64"
    assert info["wmpo"]["checkpoint_sha256"] == ["ab" * 32] and info["wmpo"]["seeds"]["push-v3"] == [0, 2]
    assert info["wmpo"]["runs"][0]["source"] == "test"

    data = pq.read_table(out / "data" / "chunk-000" / "file-000.parquet")
    assert data.column("index").to_pylist() == list(range(15))
    assert data.column("episode_index").to_pylist() == [0] * 6 + [1] * 4 + [2] * 5
    assert data.column("frame_index").to_pylist()[6:10] == [0, 1, 2, 3]
    assert data.column("task_index").to_pylist() == [0] * 6 + [1] * 4 + [0] * 5
    assert data.column("next.done").to_pylist()[:6] == [False] * 5 + [True]
    assert np.allclose(data.column("timestamp").to_numpy()[:3], [0, 1 / 80, 2 / 80])
    eps = pq.read_table(out / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    assert [e["length"] for e in eps] == [6, 4, 5] and eps[1]["tasks"] == ["do door-open-v3"]
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in eps] == [(0, 6), (6, 10), (10, 15)]
    # three episodes back to back in one mp4
    assert [e[f"videos/{KEY}/from_timestamp"] for e in eps] == [0, 6 / 80, 10 / 80]
    assert eps[2][f"videos/{KEY}/to_timestamp"] == 15 / 80 and eps[0]["stats/action/count"] == [6]
    tasks = pq.read_table(out / "meta" / "tasks.parquet")
    assert tasks.column("task").to_pylist() == ["do push-v3", "do door-open-v3"]
    assert tasks.schema.pandas_metadata["index_columns"] == ["task"]  # LeRobot looks tasks up by index
    stats = json.loads((out / "meta" / "stats.json").read_text())
    assert np.array(stats[KEY]["mean"]).shape == (3, 1, 1) and stats["action"]["count"] == [15]
    all_actions = np.stack(data.column("action").to_numpy(zero_copy_only=False))
    assert np.allclose(stats["action"]["mean"], all_actions.mean(0)) and np.allclose(stats["action"]["std"],
                                                                                        all_actions.std(0))

    checks = doctor(out)
    assert all(c["severity"] != "FAIL" for c in checks.values()), checks
    for name in ("Metadata & Format Compliance", "Temporal Consistency", "Action Quality", "Video Integrity",
                 "Feature Consistency", "Portability"):
        assert checks[name]["severity"] == "PASS", checks[name]

    back = tmp_path / "back"
    assert import_lerobot(out, back, progress=False)["episodes"] == 3
    compare(src, back, max_abs=3)  # yuv444p at crf 0: only the RGB <-> YUV rounding is lost
    assert json.loads((back / "meta" / "info.json").read_text())["camera"] == {"name": "cam"}
    runs = json.loads((back / "meta" / "manifest.json").read_text())["runs"]
    assert [r["source"] for r in runs] == ["test", "lerobot"]


def test_lerobot_doctor_fails_a_broken_export(tmp_path):
    """The validator is no rubber stamp: a dataset with its video gone fails it."""
    out = tmp_path / "lerobot"
    export_lerobot(make_dataset(tmp_path / "wmpo", [[episode(3, 0)]]), out, progress=False)
    shutil.rmtree(out / "videos")
    assert doctor(out)["Video Integrity"]["severity"] == "FAIL"


def test_rgb24_is_lossless_and_extra_columns_are_exported(tmp_path):
    src = make_dataset(tmp_path / "wmpo", [[episode(4, 0), episode(2, 1)]])
    shard = src / "data" / "shard-000.npz"
    with np.load(shard) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["judge_score"] = np.linspace(0, 1, len(arrays["frame"])).astype(np.float32)
    np.savez(shard, **arrays)
    out = tmp_path / "lerobot"
    export_lerobot(src, out, VideoSettings(pix_fmt="rgb24"), progress=False)
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["features"]["judge_score"]["dtype"] == "float32"
    assert info["features"][KEY]["info"]["video.pix_fmt"] == "rgb24"
    scores = pq.read_table(out / "data" / "chunk-000" / "file-000.parquet").column("judge_score").to_numpy()
    assert np.array_equal(scores, arrays["judge_score"])
    import_lerobot(out, tmp_path / "back", progress=False)
    compare(src, tmp_path / "back", max_abs=0)


def test_imagined_dataset_exports_at_its_own_frame_rate(tmp_path):
    src = make_dataset(tmp_path / "wmpo", [[episode(3, 0, stride=2), episode(2, 1, stride=2)]])
    out = tmp_path / "lerobot"
    assert export_lerobot(src, out, progress=False)["fps"] == 40
    import_lerobot(out, tmp_path / "back", progress=False)
    compare(src, tmp_path / "back", max_abs=3)
    assert json.loads((tmp_path / "back" / "meta" / "info.json").read_text())["fps"] == 80
    mixed = make_dataset(tmp_path / "mixed", [[episode(3, 0, stride=2), episode(2, 1)]])
    with pytest.raises(DatasetError, match="mixes frame strides"):
        export_lerobot(mixed, tmp_path / "x", progress=False)


def strip_wmpo(root: Path) -> None:
    """Make an export look like any LeRobot dataset: no wmpo metadata, next.success instead of success."""
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    del info["wmpo"]
    info["features"]["next.success"] = info["features"].pop("success")
    info_path.write_text(json.dumps(info))
    ep_path = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    eps = pq.read_table(ep_path)
    pq.write_table(eps.drop_columns(["wmpo/meta"]), ep_path)
    data_path = root / "data" / "chunk-000" / "file-000.parquet"
    data = pq.read_table(data_path)
    success = data.column("success").to_pylist()
    nxt = success[1:] + [False]  # success after this row's action
    data = data.drop_columns(["success"]).append_column("next.success", pa.array(nxt))
    pq.write_table(data, data_path)


def test_import_of_a_foreign_dataset_trains(tmp_path):
    """A LeRobot dataset that wmpo did not write: tasks from tasks.parquet, success from next.success,
    frames resized to the requested size; `wmpo train judge` reads the result."""
    src = make_dataset(tmp_path / "wmpo", [[episode(12, i, succeed=i % 2 == 0) for i in range(4)]])
    out = tmp_path / "lerobot"
    export_lerobot(src, out, progress=False)
    strip_wmpo(out)
    back = tmp_path / "back"
    summary = import_lerobot(out, back, image_size=64, progress=False)
    assert summary["successes"] == 2 and summary["not_imported"] == []
    ds = EpisodeDataset.load(back)
    ep = ds.episode(1)
    assert ep.frames.shape == (13, 64, 64, 3) and ep.meta["task"] == "do push-v3" and ep.meta["seed"] == 1
    assert ep.meta["source"]["kind"] == "lerobot" and not ep.succeeded and ds.episode(2).succeeded
    orig = EpisodeDataset.load(src)
    assert np.array_equal(ds.episode(3).success, orig.episode(3).success)
    assert ds.episode(3).actions.tobytes() == orig.episode(3).actions.tobytes()
    # judge training reads it end to end (a couple of steps of the tiny preset)
    rc = main(["train", "judge", "--data", str(back), "--val-data", str(back), "--out", str(tmp_path / "judge"),
               "--steps", "2", "--batch-size", "4", "--preset", "tiny", "--recon-prob", "0"])
    assert rc == 0 and (tmp_path / "judge" / "model.safetensors").exists()


@pytest.fixture
def exported(tmp_path) -> Path:
    out = tmp_path / "lerobot"
    export_lerobot(make_dataset(tmp_path / "wmpo", [[episode(4, 0), episode(3, 1)]]), out, progress=False)
    return out


def run_import(tmp_path: Path, src: Path, capsys, *extra: str) -> str:
    rc = main(["import", "lerobot", "--data", str(src), "--out", str(tmp_path / "bad-out"), *extra])
    err = capsys.readouterr().err
    last = err.rstrip().split("\n")[-1]  # after the progress bar, one line
    assert rc == 2 and last.startswith("error: ") and "Traceback" not in err, err
    assert not (tmp_path / "bad-out").exists() and not (tmp_path / "bad-out.partial").exists()
    return last


def edit_info(root: Path, **changes) -> None:
    path = root / "meta" / "info.json"
    info = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            info.pop(k)
        else:
            info[k] = v
    path.write_text(json.dumps(info))


def test_import_missing_info(tmp_path, exported, capsys):
    (exported / "meta" / "info.json").unlink()
    assert "meta/info.json is missing" in run_import(tmp_path, exported, capsys)


def test_import_wrong_version(tmp_path, exported, capsys):
    edit_info(exported, codebase_version="v2.1")
    err = run_import(tmp_path, exported, capsys)
    assert "info.json: codebase_version is 'v2.1'" in err


def test_import_action_of_wrong_width(tmp_path, exported, capsys):
    info = json.loads((exported / "meta" / "info.json").read_text())
    info["features"]["action"]["shape"] = [7]
    edit_info(exported, features=info["features"])
    assert "feature 'action' has shape [7]" in run_import(tmp_path, exported, capsys)
    # info.json says 4 but the parquet column is 6 wide
    info["features"]["action"]["shape"] = [4]
    edit_info(exported, features=info["features"])
    path = exported / "data" / "chunk-000" / "file-000.parquet"
    data = pq.read_table(path)
    wide = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(data.num_rows * 6, np.float32)), 6)
    pq.write_table(data.set_column(data.schema.get_field_index("action"), "action", wide), path)
    err = run_import(tmp_path, exported, capsys)
    assert "file-000.parquet: column 'action' has width (6,)" in err


def test_import_missing_column(tmp_path, exported, capsys):
    path = exported / "data" / "chunk-000" / "file-000.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["frame_index"]), path)
    err = run_import(tmp_path, exported, capsys)
    assert "file-000.parquet lacks the columns ['frame_index']" in err
    ep_path = exported / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    pq.write_table(pq.read_table(ep_path).drop_columns([f"videos/{KEY}/from_timestamp"]), ep_path)
    assert f"lacks the columns ['videos/{KEY}/from_timestamp']" in run_import(tmp_path, exported, capsys)


def test_import_video_missing_or_short(tmp_path, exported, capsys):
    video = exported / "videos" / KEY / "chunk-000" / "file-000.mp4"
    video.rename(video.with_suffix(".bak"))
    assert "file-000.mp4 is missing" in run_import(tmp_path, exported, capsys)
    video.with_suffix(".bak").rename(video)
    # the episodes metadata claims more frames than the video holds
    for name in ("meta/episodes/chunk-000/file-000.parquet",):
        path = exported / name
        eps = pq.read_table(path)
        late = pa.array([0.0, 1.0])
        pq.write_table(eps.set_column(eps.schema.get_field_index(f"videos/{KEY}/from_timestamp"),
                                      f"videos/{KEY}/from_timestamp", late), path)
    err = run_import(tmp_path, exported, capsys)
    assert "episode 1: video" in err and "is shorter than the data: 4 frames from t=1.000s needed" in err


def test_import_corrupt_parquet_and_unknown_camera(tmp_path, exported, capsys):
    assert "no camera 'observation.images.top'" in run_import(tmp_path, exported, capsys,
                                                              "--camera", "observation.images.top")
    (exported / "meta" / "tasks.parquet").write_bytes(b"not parquet")
    assert "tasks.parquet is not a readable parquet file" in run_import(tmp_path, exported, capsys)


def test_export_refuses_existing_out_and_missing_data(tmp_path, exported):
    with pytest.raises(ConfigError, match="already exists"):
        export_lerobot(tmp_path / "wmpo", exported, progress=False)
    with pytest.raises(DatasetError, match="missing meta/info.json"):
        export_lerobot(tmp_path / "nothing", tmp_path / "x", progress=False)


def test_files_roll_over_at_the_size_limit(tmp_path):
    """Past data_files_size_in_mb / video_files_size_in_mb a new file starts; import follows the
    episodes metadata across files (and the doctor counts each file's frames)."""
    src = make_dataset(tmp_path / "wmpo", [[episode(3 + i, i) for i in range(3)]])
    out = tmp_path / "lerobot"
    export_lerobot(src, out, data_file_mb=1e-6, video_file_mb=1e-6, progress=False)
    eps = pq.read_table(out / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    assert [e["data/file_index"] for e in eps] == [0, 1, 2]
    assert [e[f"videos/{KEY}/file_index"] for e in eps] == [0, 1, 2]
    assert all(e[f"videos/{KEY}/from_timestamp"] == 0 for e in eps)
    assert len(list((out / "videos" / KEY / "chunk-000").glob("file-*.mp4"))) == 3
    assert doctor(out)["Video Integrity"]["severity"] == "PASS"
    import_lerobot(out, tmp_path / "back", progress=False)
    compare(src, tmp_path / "back", max_abs=3)


def test_av1_as_on_lerobots_hub_reads_back(tmp_path, capsys):
    """SVT-AV1 in yuv420p is what LeRobot's own datasets use: import decodes it (lossy: PSNR only)."""
    src = make_dataset(tmp_path / "wmpo", [[episode(4, 0), episode(3, 1)]])
    out = tmp_path / "lerobot"
    assert main(["export", "lerobot", "--data", str(src), "--out", str(out), "--codec", "av1",
                 "--pix-fmt", "yuv420p", "--crf", "30"]) == 0
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["features"][KEY]["info"]["video.codec"] == "av1"
    import_lerobot(out, tmp_path / "back", progress=False)
    a, b = EpisodeDataset.load(src), EpisodeDataset.load(tmp_path / "back")
    mse = np.mean([((a.episode(i).frames.astype(float) - b.episode(i).frames) ** 2).mean() for i in range(2)])
    assert 10 * np.log10(255**2 / mse) > 20 and a.episode(1).actions.tobytes() == b.episode(1).actions.tobytes()
    capsys.readouterr()
    assert main(["export", "lerobot", "--data", str(src), "--out", str(tmp_path / "x"), "--codec", "av1"]) == 2
    assert "SVT-AV1 encodes yuv420p only" in capsys.readouterr().err


def test_import_of_image_features(tmp_path):
    """Image features (PNG bytes inside the data parquet) instead of videos."""
    import io

    from PIL import Image

    src = make_dataset(tmp_path / "wmpo", [[episode(4, 0), episode(3, 1)]])
    out = tmp_path / "lerobot"
    export_lerobot(src, out, progress=False)
    shutil.rmtree(out / "videos")
    info = json.loads((out / "meta" / "info.json").read_text())
    info["features"][KEY]["dtype"] = "image"
    info["features"]["observation.state"] = {"dtype": "float32", "shape": [1], "names": None}
    del info["video_path"]
    (out / "meta" / "info.json").write_text(json.dumps(info))
    frames_all = np.concatenate([EpisodeDataset.load(src).episode(i).frames for i in range(2)])
    pngs = []
    for f in frames_all:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="PNG")
        pngs.append({"bytes": buf.getvalue(), "path": None})
    path = out / "data" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(path).append_column(KEY, pa.array(pngs))
    pq.write_table(table.append_column("observation.state", pa.array(np.zeros(len(pngs), np.float32))), path)
    assert import_lerobot(out, tmp_path / "back", progress=False)["not_imported"] == ["observation.state"]
    compare(src, tmp_path / "back", max_abs=0)  # PNG is lossless


def test_import_corrupt_data_file(tmp_path, exported, capsys):
    (exported / "data" / "chunk-000" / "file-000.parquet").write_bytes(b"PAR1 truncated")
    assert "file-000.parquet is not a readable parquet file" in run_import(tmp_path, exported, capsys)
