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


def test_serve_prints_the_rollout_viewers_url_and_passes_the_runs_directory(
    capsys, tmp_path, monkeypatch
):
    """The model load and the server are replaced (this test is about the command line); the
    settings the server would get are the real ones."""
    import services.simulator.server as server

    for name in [n for n in __import__("os").environ if n.startswith("WMPO_")]:
        monkeypatch.delenv(name)
    served = []
    monkeypatch.setattr(server, "world_model_from_settings", lambda settings: None)
    monkeypatch.setattr(server, "serve", lambda settings, model, worker: served.append(settings))
    assert main(["serve", "simulator", "--dev", "--port", "8123", "--runs-dir", str(tmp_path)]) == 0
    assert served[0].runs_dir == str(tmp_path)
    err = capsys.readouterr().err
    assert "rollout viewer: http://127.0.0.1:8123/viewer/\n" in err
    monkeypatch.setenv("WMPO_API_KEYS", "cli-key-0123456789abcdef")
    assert main(["serve", "simulator", "--host", "0.0.0.0", "--port", "8124"]) == 0
    err = capsys.readouterr().err
    assert "rollout viewer: http://127.0.0.1:8124/viewer/ (it asks for an API key" in err
    assert "cli-key" not in err
