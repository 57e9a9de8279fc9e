import subprocess
import sys

from wmpo.cli import main


def test_unknown_task_is_a_one_line_error(capsys):
    assert main(["collect", "--out", "/tmp/never", "--tasks", "push-v9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown task 'push-v9'") and "push-v3" in err and "Traceback" not in err


def test_missing_checkpoint_is_a_clear_error(capsys, tmp_path):
    assert main(["eval", "policy", "--checkpoint", str(tmp_path / "nope"), "--episodes", "1"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_missing_dataset_is_a_clear_error(capsys, tmp_path):
    assert main(["train", "policy", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "wmpo collect" in capsys.readouterr().err


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "services.cli", "tasks"], capture_output=True, text=True, check=True)
    assert "door-open-v3" in out.stdout and "[policy task]" in out.stdout


def test_core_cli_does_not_import_web_dependencies():
    code = ("import sys, wmpo.cli; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('fastapi', 'grpc', 'uvicorn', 'services')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_cli_parses_without_metaworld():
    """A GPU node that only trains the DiT on packed latents has no MuJoCo or MetaWorld."""
    code = ("import sys\n"
            "for m in ('mujoco', 'metaworld', 'gymnasium'): sys.modules[m] = None\n"
            "from wmpo.cli import build_parser\n"
            "a = build_parser().parse_args(['train', 'world-model', '--data', 'x.npz', '--autoencoder', 'a', "
            "'--out', 'o', '--device', 'cuda', '--time-budget', '60'])\n"
            "assert a.device == 'cuda' and a.time_budget == 60\n"
            "from wmpo.train.world_model import train_world_model\n"
            "from wmpo.utils.checkpoint import environment_info\n"
            "assert environment_info()['python']")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_closed_pipe_is_not_a_traceback(monkeypatch):
    class ClosedPipe:  # what stdout is after `wmpo tasks | head -1` has exited
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["tasks"]) == 0


def test_dual_noise_takes_one_dataset(capsys, tmp_path):
    argv = ["eval", "judge", "--data", str(tmp_path / "a"), str(tmp_path / "b"), "--dual-noise", str(tmp_path)]
    assert main(argv) == 2
    assert "--dual-noise takes one --data" in capsys.readouterr().err


def test_grpo_sampling_rounds_out_of_range_names_the_flag(capsys, tmp_path):
    argv = ["train", "grpo", "--out", str(tmp_path / "o"), "--sampling-rounds", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "max_sampling_rounds (--sampling-rounds)" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # refused before anything was written
