"""tests/mutation's configuration stays runnable: every module and selected test exists (a renamed test
would make a module's mutation run select nothing), every equivalence rule compiles, every scored module
is configured, and docs/mutation-scores.md is the page made from scores.json."""
import re
from pathlib import Path

import pytest

from tests.mutation.common import DOCS, PLANTED_RESULTS, SCORES, load_results, unscored_modules
from tests.mutation.modules import EQUIVALENT, KNOWN_SURVIVORS, MODULES

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_and_its_tests_exist(module):
    assert (ROOT / module).is_file(), module
    assert MODULES[module], f"{module}: no tests selected"
    for test in MODULES[module]:
        path, _, name = test.partition("::")
        assert (ROOT / path).is_file(), test
        if name:
            assert re.search(rf"^def {re.escape(name)}\(", (ROOT / path).read_text(), re.M), f"{test}: no such test"


def test_rules_compile_and_name_configured_modules():
    for module, rule, reason in [*EQUIVALENT, *KNOWN_SURVIVORS]:
        assert module == "*" or any(Path(m).match(module) for m in MODULES), module
        assert callable(rule) or re.compile(rule), rule
        assert isinstance(reason, str) and reason


def test_scored_modules_are_configured_and_the_page_is_current(monkeypatch):
    scores = load_results(SCORES)
    assert set(scores) <= set(MODULES)
    from tests.mutation import common

    written = {}
    monkeypatch.setattr(common, "save_text", lambda path, text: written.setdefault(path, text))
    common.write_docs(scores, load_results(PLANTED_RESULTS))
    assert written[DOCS] == DOCS.read_text(), "docs/mutation-scores.md is stale: .venv/bin/python -m tests.mutation --reclassify"
    assert all(m not in scores for m in unscored_modules(scores))
