"""The `wmpo` command's service commands (services/cli.py): one-line errors, no tracebacks."""

from services.cli import main


def test_serve_simulator_errors_are_one_line(capsys, tmp_path, monkeypatch):
    for name in [n for n in __import__("os").environ if n.startswith("WMPO_")]:
        monkeypatch.delenv(name)
    assert main(["serve", "simulator", "--checkpoint", str(tmp_path / "nope"), "--dev"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no world-model checkpoint at") and err.count("\n") == 1
    assert main(["serve", "simulator", "--checkpoint", str(tmp_path)]) == 2  # no API keys
    err = capsys.readouterr().err
    assert "WMPO_API_KEYS" in err and "Traceback" not in err


def test_core_commands_run_through_the_wmpo_command(capsys):
    assert main(["tasks"]) == 0
    assert "door-open-v3" in capsys.readouterr().out
    assert main(["collect", "--out", "/tmp/never", "--tasks", "push-v9"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown task 'push-v9'")


def test_the_core_cli_alone_refuses_an_embedded_stack_with_a_clear_error(capsys, tmp_path):
    from wmpo.cli import main as core_main

    assert core_main(["train", "grpo", "--out", str(tmp_path / "o"), "--steps", "1"]) == 2
    assert "embedded stack" in capsys.readouterr().err
