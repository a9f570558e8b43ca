"""The daemon process's wiring (kjumpd.daemon.main) without a bus."""

from __future__ import annotations

import dataclasses

from kjumpd.daemon.config import Config
from kjumpd.daemon.hibernator import HibernateSettings
from kjumpd.daemon.main import settings_from


def test_every_hibernate_setting_comes_from_the_config_field_of_its_name() -> None:
    """Issue 14 ("each fact once"): nothing is copied field by field, nothing is left at its default."""
    config_fields = {f.name for f in dataclasses.fields(Config)}
    settings_fields = [f.name for f in dataclasses.fields(HibernateSettings)]
    assert set(settings_fields) <= config_fields
    changed = {}
    for f in dataclasses.fields(HibernateSettings):
        value = getattr(Config(), f.name)
        changed[f.name] = value + 4096 if isinstance(value, int) else f"/x/{f.name}" if f.name != "compression" else "zstd"
    settings = settings_from(Config(**changed))
    assert {name: getattr(settings, name) for name in settings_fields} == changed
