"""Settings are defined once: `.env.example` and docs/configuration.md are what `make docs` writes from them."""

from __future__ import annotations

import re
from dataclasses import fields

from dotenv import dotenv_values

from server.config import VARIABLES, Settings, load_settings
from server.config_docs import CONFIGURATION_PAGE, ENV_EXAMPLE, env_example, main, with_tables

NAMES = [variable.name for variable in VARIABLES]


def test_every_setting_but_demo_has_one_variable() -> None:
    assert len(NAMES) == len(set(NAMES))
    assert {f.name for f in fields(Settings)} - {v.field for v in VARIABLES} == {"demo"}
    assert {"CLIENT_API_KEYS", "CLIENT_API_KEYS_FILE"} <= set(NAMES)


def test_each_written_default_parses_to_the_default() -> None:
    for variable in VARIABLES:
        if variable.written_default:
            assert variable.parse(variable.name, variable.written_default) == variable.default, variable.name


def test_env_example_is_what_make_docs_writes() -> None:
    committed = ENV_EXAMPLE.read_text(encoding="utf-8")
    assert list(dotenv_values(ENV_EXAMPLE)) == NAMES, "run `make docs`"
    assert committed == env_example(), "run `make docs`"


def test_env_example_loads_as_the_defaults() -> None:
    assert load_settings(dotenv_values(ENV_EXAMPLE), demo=True) == load_settings({}, demo=True)


def test_configuration_page_tables_are_what_make_docs_writes() -> None:
    page = CONFIGURATION_PAGE.read_text(encoding="utf-8")
    assert re.findall(r"^\| `([A-Z_]+)` \|", page, re.MULTILINE) == NAMES, "run `make docs`"
    assert page == with_tables(page), "run `make docs`"


def test_check_mode_passes_on_the_committed_files() -> None:
    assert main(["--check"]) == 0
