"""RFC 6455 conformance: every Autobahn case of groups 1 to 10 against fws_server -f echo."""

from __future__ import annotations

import shutil

import pytest
from autobahn import run_autobahn, summary


@pytest.mark.skipif(shutil.which("kosoku") is None, reason="kosoku is not installed")
def test_autobahn_groups_1_to_10_have_no_failed_case(tmp_path):
    result = run_autobahn(tmp_path / "autobahn")
    print(summary(result))
    assert sum(result["behavior"].values()) >= 290, summary(result)  # the suite really ran
    assert result["failed"] == [], summary(result)
    assert set(result["behavior"]) <= {"OK", "NON-STRICT", "INFORMATIONAL"}
    assert set(result["behaviorClose"]) <= {"OK", "INFORMATIONAL"}
