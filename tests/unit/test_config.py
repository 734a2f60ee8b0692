"""Settings: every bad value is rejected with the field's name."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sandbox.config import GROUPS, SETTINGS, Settings, check_batch, check_port_free, load_settings, parse_env_pairs
from sandbox.errors import PortInUseError, UsageError


def test_defaults_are_valid() -> None:
    s = Settings()
    assert (s.project, s.size, s.port, s.version, s.strategy, s.mode) == (
        "sandbox", 3, 8080, "", "one-at-a-time", "replace")  # "": the first declared (v1)
    assert (s.lb_apply, s.client_keepalive) == ("dynamic", True)  # keep-alive on, no reload per set change


@pytest.mark.parametrize("field, value", [
    ("size", 0), ("size", 65), ("port", 0), ("port", 65536), ("project", "bad_name"), ("project", "-x"),
    ("project", ""), ("project", "a" * 41), ("version", "v3"), ("to_version", "v 2!"), ("strategy", "yolo"),
    ("mode", "swap"), ("batch", 0), ("drain_timeout", 0), ("ready_timeout", -1), ("max_error_ratio", 1.5),
    ("users", 0), ("max_dropped", -1), ("v2_mode", "weird"), ("lb_apply", "hot"),
    ("locustfile", Path("/nonexistent.py")), ("load_workers", 0),
    ("load_workers", 17), ("think_ms", "x"), ("think_ms", "9-1"), ("client_timeout_s", 0),
    ("client_timeout_s", 601), ("sessions", "disk"), ("warmup_s", -1), ("cooldown_s", 601),
    ("max_p99_ms", 0), ("max_p99_ms", 600_001), ("min_latency_samples", 0), ("size", True), ("size", "3"),
    ("max_stall_s", "1"), ("sticky", 1), ("seed", -1), ("ready_successes", 21),
])
def test_bad_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(UsageError, match=f"^{field}: "):
        Settings(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", ["surge", "double-half", "blue-green"])
def test_in_place_needs_a_strategy_without_new_containers(strategy: str) -> None:
    with pytest.raises(UsageError, match=r"^mode: in-place cannot be used with"):
        Settings(mode="in-place", strategy=strategy)  # type: ignore[arg-type]


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    toml = tmp_path / "sandbox.toml"
    toml.write_text('[sandbox]\nsize = 5\nport = 9000\nstrategy = "rolling"\nbatch = 2\n')
    s = load_settings({"port": 9100, "batch": None}, config_path=toml, environ={"SANDBOX_SIZE": "7"})
    assert (s.size, s.port, s.strategy, s.batch) == (7, 9100, "rolling", 2)


def test_file_errors_name_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "sandbox.toml"
    bad.write_text("sizee = 3\n")
    with pytest.raises(UsageError, match="unknown setting 'sizee'"):
        load_settings(config_path=bad, environ={})
    bad.write_text("size = [\n")
    with pytest.raises(UsageError, match=r"^config: "):
        load_settings(config_path=bad, environ={})
    with pytest.raises(UsageError, match="cannot read"):
        load_settings(config_path=tmp_path / "missing.toml", environ={})


def test_env_values_are_coerced_and_checked() -> None:
    s = load_settings(environ={"SANDBOX_AUTO_ROLLBACK": "false", "SANDBOX_MAX_ERROR_RATIO": "0.2"},
                      config_path=None)
    assert s.auto_rollback is False and s.max_error_ratio == 0.2
    with pytest.raises(UsageError, match=r"^SANDBOX_SIZE: 'many' is not a valid value$"):
        load_settings(environ={"SANDBOX_SIZE": "many"})
    with pytest.raises(UsageError, match=r"^SANDBOX_SIZE: 0 must be between 1 and 64$"):
        load_settings(environ={"SANDBOX_SIZE": "0"})
    with pytest.raises(UsageError, match=r"^SANDBOX_SET_ENV: '1A=2' must look like KEY=VALUE$"):
        load_settings(environ={"SANDBOX_SET_ENV": "A=1,1A=2"})


def test_env_pairs() -> None:
    assert parse_env_pairs(["A=1", "B_2=x=y", "C="]) == {"A": "1", "B_2": "x=y", "C": ""}
    for bad in (["A"], ["=1"], ["1A=2"]):
        with pytest.raises(UsageError, match=r"^set_env: "):
            parse_env_pairs(bad)


def test_taken_port_is_detected() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"127.0.0.1:{port} is already in use"):
            check_port_free(port)
    check_port_free(port)  # free again once released


def test_load_settings_from_file_and_env(tmp_path: Path) -> None:
    toml = tmp_path / "sandbox.toml"
    toml.write_text("[sandbox]\nthink_ms = 0\nload_workers = 3\n")
    s = load_settings(config_path=toml, environ={"SANDBOX_CLIENT_TIMEOUT_S": "4.5"})
    assert (s.think_ms, s.load_workers, s.client_timeout_s) == ("0", 3, 4.5)
    d = Settings()
    assert (d.think_ms, d.client_timeout_s) == ("50-200", 10.0) and d.load_workers >= 2


@pytest.mark.parametrize(("strategy", "batch", "size", "refused"), [
    ("rolling", 2, 2, True), ("rolling", 99, 2, True), ("rolling", 1, 1, True), ("rolling", 1, 2, False),
    ("rolling", 8, 9, False), ("surge", 9, 9, False), ("naive", 9, 9, False), ("one-at-a-time", 1, 1, False),
])
def test_a_rolling_batch_must_leave_a_server_serving(strategy: str, batch: int, size: int, refused: bool) -> None:
    if refused:
        with pytest.raises(UsageError, match=rf"^batch: {batch} must be smaller than the fleet \({size} servers\)"):
            check_batch(strategy, batch, size)
    else:
        check_batch(strategy, batch, size)


def test_the_client_timeout_must_exceed_the_stall_limit() -> None:
    assert Settings(max_stall_s=9.5).client_timeout_s == 10.0
    with pytest.raises(UsageError, match=r"^client_timeout_s: 10.0 must be larger than max_stall_s \(10.0\)"):
        Settings(max_stall_s=10.0)
    assert Settings(max_stall_s=10.0, client_timeout_s=15.0).max_stall_s == 10.0


def test_your_own_images_run_on_either_engine() -> None:
    for engine in ("docker", "swarm"):
        assert Settings(engine=engine, images={"green": "my/app:1"}).images == {"green": "my/app:1"}  # type: ignore[arg-type]


def test_the_verdicts_latency_limits() -> None:
    s = Settings()
    assert (s.max_p99_ms, s.min_latency_samples) == (500.0, 200)
    assert Settings(max_p99_ms=600_000, min_latency_samples=1).max_p99_ms == 600_000


def test_each_setting_is_defined_once_with_its_group_help_and_variable() -> None:
    assert set(SETTINGS) == {f for f in Settings.__dataclass_fields__ if f != "origin"}
    defaults = Settings()
    for one in SETTINGS.values():
        assert one.spec.group in GROUPS and one.spec.help, one.name
        assert one.env == f"SANDBOX_{one.name.upper()}"
        if one.kind in (int, float, str) and not one.optional:  # its default, as text, reads back as itself
            text = str(getattr(defaults, one.name))
            assert getattr(load_settings(environ={one.env: text}), one.name) == getattr(defaults, one.name)
    assert defaults.group("limits") == {
        "max_dropped": 0, "max_stall_s": 1.0, "slow_ms": 2000.0, "max_slow": 0, "max_p99_ratio": 3.0,
        "max_p99_ms": 500.0, "min_latency_samples": 200, "max_violations": 0, "max_not_found": 0,
        "max_migration_errors": 0, "min_requests": 100, "max_abnormal_closes": 0, "max_messages_lost": 0,
        "max_reconnect_p99_ms": 2000.0, "require_rollback_safe": False}
    assert sum(len(defaults.group(g)) for g in GROUPS) == len(SETTINGS)
    names = [alias for one in SETTINGS.values()  # what an error may call each setting: never two at once
             for alias in {one.name, one.spec.item, *(f.removeprefix("--") for f in one.flags)} - {""}]
    assert len(names) == len(set(names))


def test_group_tables_in_the_file(tmp_path: Path) -> None:
    toml = tmp_path / "sandbox.toml"
    toml.write_text('[sandbox]\nsize = 4\n[fleet]\nport = 9001\n[limits]\nmax-p99-ms = 450\n'
                    '[load]\nusers = 5\n[app]\napp_env = { A = "1" }\n')
    s = load_settings(config_path=toml, environ={})
    assert (s.size, s.port, s.max_p99_ms, s.users, dict(s.app_env)) == (4, 9001, 450.0, 5, {"A": "1"})
    toml.write_text("[limits]\nsize = 4\n")
    with pytest.raises(UsageError, match=r"'size' belongs in \[fleet\], not \[limits\]"):
        load_settings(config_path=toml, environ={})
    toml.write_text("[limits]\nmax_stall_s = 20\n")
    with pytest.raises(UsageError, match=r"^client_timeout_s: 10.0 must be larger than limits.max_stall_s \(20.0\)"):
        load_settings(config_path=toml, environ={})
    toml.write_text("limits = 3\n")
    with pytest.raises(UsageError, match=r"\[limits\] must be a table of settings"):
        load_settings(config_path=toml, environ={})


def test_errors_name_the_flag_the_variable_or_the_key() -> None:
    flags = {"client_timeout_s": "--client-timeout", "max_stall_s": "--max-stall-s"}
    with pytest.raises(UsageError, match=r"^--client-timeout: 10.0 must be larger than SANDBOX_MAX_STALL_S \(11.0\)"):
        load_settings(environ={"SANDBOX_MAX_STALL_S": "11"}, flags=flags)
    with pytest.raises(UsageError, match=r"^--max-stall-s: -1.0 must be in \(0, 3600\] seconds$"):
        load_settings({"max_stall_s": -1}, environ={}, flags=flags)
    with pytest.raises(UsageError, match=r"^max_stall_s: -1.0 must be"):  # no flag: the setting's own name
        load_settings({"max_stall_s": -1}, environ={})
