"""Shared by tests/ and benchmarks/: a file test_<name>.py is marked <name> when pytest.ini
registers that marker (an op or a stage), so that

    pytest tests benchmarks -m ddpm_step

runs an op's tests and its benchmarks together. One rule here rather than a pytestmark line in
every file: a new op's files are marked once its marker is registered."""
import pytest


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    registered = {line.split(":", 1)[0].strip() for line in config.getini("markers")}
    for item in items:
        name = item.path.stem.removeprefix("test_")
        if name in registered:
            item.add_marker(name)
