"""Settings are read once from the environment, with defaults and clear errors."""

from __future__ import annotations

import pytest

from contracts.settings import (
    AggregatorSettings,
    Backends,
    GatewaySettings,
    QuerySettings,
    SettingsError,
)


def test_defaults_apply_when_the_environment_is_empty() -> None:
    settings = GatewaySettings.from_env({})
    assert settings.backends == Backends()
    assert settings.port == 8101 and settings.produce_timeout_s == 2.0
    assert AggregatorSettings.from_env({}).max_records == 2000


def test_values_come_from_the_environment() -> None:
    settings = GatewaySettings.from_env({
        "KAFKA_BOOTSTRAP": "k:1", "PORT": "9000",
        "PRODUCE_TIMEOUT_S": "0.5", "KAFKA_COMPRESSION": "lz4"})
    assert settings.backends.kafka_bootstrap == "k:1"
    assert (settings.port, settings.produce_timeout_s) == (9000, 0.5)
    assert settings.compression == "lz4"


def test_malformed_values_name_the_variable() -> None:
    with pytest.raises(SettingsError, match="PORT"):
        GatewaySettings.from_env({"PORT": "eighty"})
    with pytest.raises(SettingsError, match="STATS_AUTH_DISABLED"):
        QuerySettings.from_env({"STATS_AUTH_DISABLED": "maybe"})
    with pytest.raises(SettingsError, match="KAFKA_COMPRESSION must be one of none, gzip"):
        GatewaySettings.from_env({"KAFKA_COMPRESSION": "lz5"})
    assert GatewaySettings.from_env({"KAFKA_COMPRESSION": "NONE"}).compression is None


def test_the_query_api_needs_tokens_unless_told_otherwise_and_takes_none_from_env() -> None:
    assert not QuerySettings.from_env({}).auth_disabled
    assert QuerySettings.from_env({"STATS_AUTH_DISABLED": "true"}).auth_disabled
    with pytest.raises(SettingsError, match="STATS_TOKENS is gone"):
        QuerySettings.from_env({"STATS_TOKENS": "t1,t2"})


def test_allowed_sites_is_refused_with_a_pointer_to_the_registry() -> None:
    with pytest.raises(SettingsError, match="admin sites add"):
        GatewaySettings.from_env({"ALLOWED_SITES": "a,b"})


def test_the_answer_cache_lasts_20_ms_by_default_and_0_turns_it_off() -> None:
    public = {"STATS_AUTH_DISABLED": "true"}
    assert QuerySettings.from_env(public).answer_cache_ms == 20
    assert QuerySettings.from_env({**public, "QUERY_ANSWER_CACHE_MS": "0"}).answer_cache_ms == 0
    assert QuerySettings.from_env({**public, "QUERY_ANSWER_CACHE_MS": " 50 "}
                                  ).answer_cache_ms == 50
    for bad in ("-1", "20ms", "0.5"):
        with pytest.raises(SettingsError, match="QUERY_ANSWER_CACHE_MS"):
            QuerySettings.from_env({**public, "QUERY_ANSWER_CACHE_MS": bad})


def test_trusted_proxies_are_addresses_or_networks() -> None:
    assert GatewaySettings.from_env({}).trusted_proxies == ("127.0.0.1", "::1")
    assert GatewaySettings.from_env({"TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1"}
                                    ).trusted_proxies == ("10.0.0.0/8", "127.0.0.1")
    with pytest.raises(SettingsError, match="TRUSTED_PROXIES"):
        GatewaySettings.from_env({"TRUSTED_PROXIES": "nginx"})
