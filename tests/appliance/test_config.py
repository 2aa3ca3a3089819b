"""The configuration's line sections (records, archive, line, control, service) and the example files."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from appliance.cli import config_cmd
from appliance.config import (
    AppConfig,
    ControlSettings,
    LineSettings,
    ServiceSettings,
    load_config,
    parse_config,
)
from appliance.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("line-*.yaml"))

MINIMAL = {"camera": {"type": "synthetic"}, "inspection": {"bundle": "b"}}


def test_there_are_example_configs() -> None:
    assert {p.name for p in EXAMPLES} >= {"line-synthetic.yaml", "line-genicam.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_pass_aoi_config_validate(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="aoi")
    config_cmd.add_parser(parser.add_subparsers(), "config")
    args = parser.parse_args(["config", "validate", str(path)])
    assert args.func(args) == 0
    assert "valid" in capsys.readouterr().out
    config = load_config(path)
    assert config.control.host == "127.0.0.1" and config.outputs


def test_defaults_and_paths_relative_to_data_dir(tmp_path: Path) -> None:
    config = parse_config({**MINIMAL, "data_dir": str(tmp_path)})
    assert config.records_settings().path == tmp_path / "records" / "aoi-records.sqlite3"
    assert config.archive_settings().directory == tmp_path / "records" / "images"
    assert config.control.enabled and config.control.host == "127.0.0.1" and config.control.token is None
    absolute = parse_config({**MINIMAL, "records": {"path": "/srv/aoi/r.sqlite3"}})
    assert absolute.records_settings().path == Path("/srv/aoi/r.sqlite3")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"control": {"prot": 1}}, "control.prot: unknown key"),
        ({"control": {"host": "0.0.0.0"}}, "allow_remote"),
        ({"control": {"host": "my-box", "allow_remote": True}}, "not an IP address"),
        ({"control": {"token": "short"}}, "control.token"),
        ({"line": {"stats_window": 1}}, "line.stats_window"),
        ({"records": {"batch_size": 0}}, "records.batch_size"),
        ({"inspection": {"bundle": "b", "mode": "fast"}}, r"inspection.mode.*'halo' or 'auto'"),
        ({"archive": {"heatmap_min": 3, "heatmap_max": 1}}, "heatmap_max"),
        ({"service": {"stall_s": 1}, "inspection": {"bundle": "b", "deadline_ms": 2000}}, "service.stall_s"),
    ],
)
def test_errors_name_the_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({**MINIMAL, **raw})


def test_remote_control_needs_allow_remote() -> None:
    config = parse_config({**MINIMAL, "control": {"host": "192.168.1.10", "allow_remote": True}})
    assert config.control.allow_remote


@pytest.mark.parametrize("model", [AppConfig, LineSettings, ControlSettings, ServiceSettings])
def test_every_field_is_documented(model: type[AppConfig]) -> None:
    for name, field in model.model_fields.items():
        assert field.description, f"{model.__name__}.{name} has no description"


CALIBRATION_SECTIONS = ("flatfield", "scale", "template", "roi", "capture")


@pytest.mark.parametrize("doc", ["README.md", "docs/commissioning.md"])
def test_calibration_yaml_in_the_docs_is_valid_config(doc: str) -> None:
    """Every YAML block of the commissioning docs that holds calibration sections validates as they are."""
    import re

    import yaml

    root = Path(__file__).resolve().parents[2]
    blocks = re.findall(r"```yaml\n(.*?)```", (root / doc).read_text(), flags=re.S)
    checked = set()
    base = {"camera": {"type": "synthetic"}, "inspection": {"bundle": "b"}}
    for block in blocks:
        raw = yaml.safe_load(block)
        sections = {k: v for k, v in (raw or {}).items() if k in CALIBRATION_SECTIONS}
        if sections:
            parse_config({**base, **sections}, source=doc)
            checked.update(sections)
    assert checked == set(CALIBRATION_SECTIONS), f"{doc} documents only {sorted(checked)}"
