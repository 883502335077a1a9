"""Settings and the application factory: nothing happens at import time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.config import Settings, load_settings
from gateway.errors import ConfigurationError, MasterKeyError
from tests.conftest import make_settings


def test_settings_come_from_gateway_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("GATEWAY_MASTER_KEY_FILE", str(tmp_path / "k.key"))
    settings = load_settings()
    assert settings.data_dir == tmp_path / "d"
    assert settings.resolved_master_key_file == tmp_path / "k.key"
    assert settings.resolved_database_url == f"sqlite:///{(tmp_path / 'd' / 'gateway.db')}"


def test_settings_come_from_a_dotenv_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("GATEWAY_AGREEMENTS_DIR=/srv/agreements\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings().agreements_dir == Path("/srv/agreements")


def test_unsupported_database_url_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_DATABASE_URL", "mysql://x@y/z")
    with pytest.raises(ConfigurationError, match="sqlite:// or postgresql"):
        load_settings()


def test_importing_the_package_touches_nothing(tmp_path: Path) -> None:
    code = (
        "import gateway.app, gateway.cli, gateway.context, gateway.keys, gateway.audit\n"
        "from gateway.app import create_app\n"
        "from gateway.config import Settings\n"
        "create_app(Settings(_env_file=None))\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
    assert list(tmp_path.iterdir()) == []


def test_app_refuses_to_start_without_a_master_key(tmp_path: Path) -> None:
    settings: Settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'g.db'}")
    app = create_app(settings)  # building the app is fine...
    with pytest.raises(MasterKeyError, match="gateway keys init"), TestClient(app):
        pass  # ...starting it is not


def test_invalid_settings_give_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_MAX_UPLOAD_ROWS", "many")
    with pytest.raises(ConfigurationError) as error:
        load_settings()
    assert "GATEWAY_MAX_UPLOAD_ROWS" in error.value.message and "\n" not in error.value.message
