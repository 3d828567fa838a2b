"""The test fixtures are in the repository, unchanged from what the original code wrote, and a missing
one fails the test that needs it (a clone on its own never silently runs fewer tests)."""
import hashlib
import re

import pytest

from tests.conftest import FIXTURES, fixture_path


def test_a_missing_fixture_fails_instead_of_skipping():
    with pytest.raises(pytest.fail.Exception, match="missing test fixture .*no_such_file.pt"):
        fixture_path("no_such_file.pt")


def test_original_code_fixtures_match_the_checksums_in_their_readme():
    listed = re.findall(r"^\s+([0-9a-f]{64})  (\S+)$", (FIXTURES / "README.md").read_text(), re.M)
    assert {name for _, name in listed} == {"mambaswelu_tiny/checkpoint.pt", "mambaswelu_tiny/reference.pt",
                                            "mambaswelu_tiny/manifest.json", "mambaswelu_124m_keys.json"}
    for digest, name in listed:
        assert hashlib.sha256(fixture_path(name).read_bytes()).hexdigest() == digest, name
