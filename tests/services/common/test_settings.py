import pytest

from services.common.settings import (
    MIN_API_KEY_LENGTH,
    ServiceSettings,
    SettingsError,
    is_loopback,
    load_settings,
)
from tests.services.conftest import KEY_A, KEY_B


def test_defaults_bind_loopback_in_dev_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WMPO_DEV_MODE", "1")
    s = load_settings()
    assert s.host == "127.0.0.1"
    assert s.dev_mode and not s.auth_enabled
    assert s.redis_url is None


def test_reads_prefixed_env_vars_and_comma_separated_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WMPO_API_KEYS", f" {KEY_A} , {KEY_B},")
    monkeypatch.setenv("WMPO_PORT", "9001")
    monkeypatch.setenv("WMPO_GRPC_PORT", "9002")
    monkeypatch.setenv("WMPO_MAX_SESSIONS", "7")
    monkeypatch.setenv("WMPO_MAX_WAIT_MS", "2.5")
    monkeypatch.setenv("WMPO_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("WMPO_LOG_LEVEL", "debug")
    s = load_settings()
    assert [k.get_secret_value() for k in s.api_keys] == [KEY_A, KEY_B]
    assert (s.port, s.grpc_port, s.max_sessions, s.max_wait_ms) == (9001, 9002, 7, 2.5)
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.log_level == "DEBUG"
    assert s.auth_enabled


def test_empty_redis_url_means_in_process_queues(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WMPO_REDIS_URL", "")
    assert load_settings(api_keys=KEY_A).redis_url is None


def test_refuses_no_keys_outside_dev_mode() -> None:
    with pytest.raises(SettingsError, match="no API keys configured.*WMPO_API_KEYS.*WMPO_DEV_MODE"):
        load_settings()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "example.internal"])
def test_refuses_exposed_bind_without_keys_even_in_dev_mode(host: str) -> None:
    with pytest.raises(SettingsError, match=f"binding {host} without API keys"):
        load_settings(host=host, dev_mode=True)


def test_exposed_bind_with_keys_is_fine() -> None:
    s = load_settings(host="0.0.0.0", api_keys=KEY_A)
    assert s.host == "0.0.0.0" and s.auth_enabled


def test_refuses_short_keys_outside_dev_mode() -> None:
    with pytest.raises(
        SettingsError, match=f"API key #2 is 5 characters; at least {MIN_API_KEY_LENGTH}"
    ):
        load_settings(api_keys=f"{KEY_A},short")
    assert load_settings(api_keys="short", dev_mode=True).auth_enabled


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5"])
def test_dev_mode_on_an_exposed_host_still_refuses_short_keys(host: str) -> None:
    with pytest.raises(SettingsError, match="API key #1 is 1 characters.*dev mode on loopback"):
        load_settings(host=host, api_keys="x", dev_mode=True)
    assert load_settings(host=host, api_keys=KEY_A, dev_mode=True).auth_enabled


def test_service_keys_are_accepted_besides_client_keys_and_obey_the_same_floor() -> None:
    s = load_settings(api_keys=KEY_A, service_api_keys="svc-0123456789abcdef")
    assert [k.get_secret_value() for k in s.service_api_keys] == ["svc-0123456789abcdef"]
    with pytest.raises(SettingsError, match="service API key #1 is 3 characters"):
        load_settings(api_keys=KEY_A, service_api_keys="svc")
    with pytest.raises(SettingsError, match="WMPO_SERVICE_API_KEYS without WMPO_API_KEYS"):
        load_settings(service_api_keys="svc-0123456789abcdef", dev_mode=True)


def test_keys_never_appear_in_repr_or_errors() -> None:
    s = load_settings(api_keys=KEY_A)
    assert KEY_A not in repr(s) and KEY_A not in str(s)
    with pytest.raises(SettingsError) as err:
        load_settings(api_keys="tiny-secret", port=-1)
    assert "tiny-secret" not in str(err.value)
    # Direct construction (pydantic's own error) must not echo inputs either.
    with pytest.raises(ValueError) as err2:
        ServiceSettings(api_keys="tiny-secret")
    assert "tiny-secret" not in str(err2.value)


def test_error_names_the_environment_variable() -> None:
    with pytest.raises(
        SettingsError, match="WMPO_PORT: Input should be less than or equal to 65535"
    ):
        load_settings(api_keys=KEY_A, port=70000)
    with pytest.raises(SettingsError, match="WMPO_LOG_LEVEL"):
        load_settings(api_keys=KEY_A, log_level="LOUD")


def test_settings_are_frozen() -> None:
    s = load_settings(api_keys=KEY_A)
    with pytest.raises(ValueError):
        s.port = 1  # type: ignore[misc]


def test_grpc_options_carry_the_request_limit() -> None:
    s = load_settings(api_keys=KEY_A, max_request_bytes=4096)
    assert dict(s.grpc_options()) == {
        "grpc.max_receive_message_length": 4096,
        "grpc.max_send_message_length": 4096,
    }


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("myhost", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected
