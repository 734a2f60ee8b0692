"""examples/alembic-orders/sandbox.toml, the README's rehearsal as a config file, stays a valid config that
says what the README's flags say."""

from __future__ import annotations

from pathlib import Path

from sandbox.config import load_settings

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "alembic-orders" / "sandbox.toml"


def test_the_example_config_names_the_readme_flags() -> None:
    settings = load_settings(config_path=CONFIG, environ={})
    assert dict(settings.images) == {"v1": "rolling-sandbox-example/alembic-orders:v1",
                                     "v2": "rolling-sandbox-example/alembic-orders:v2"}
    assert (settings.project, settings.services, settings.health_path) == ("orders", ("postgres",), "/ready")
    assert (settings.migrate, settings.migrate_at, settings.paths) == ("alembic upgrade head", "before",
                                                                       ("/api/orders",))
