"""RFC 6455 and 7692 conformance: every Autobahn case of groups 1 to 13 against fws_server -f echo.

Groups 12 and 13 (permessage-deflate) take most of the run's 6 to 7 minutes.
"""

from __future__ import annotations

import pytest
from autobahn import run_autobahn, summary
from helpers import require_binary


@pytest.mark.timeout(1600)
def test_autobahn_groups_1_to_13_have_no_failed_case(tmp_path):
    require_binary("kosoku", "pip install kosoku; make install does")
    result = run_autobahn(tmp_path / "autobahn")
    print(summary(result))
    assert sum(result["behavior"].values()) >= 510, summary(result)  # the suite really ran
    groups = result["groups"]
    assert groups["12"] == 90 and groups["13"] == 126, groups  # compression ran, all of it
    assert result["failed"] == [], summary(result)
    assert set(result["behavior"]) <= {"OK", "NON-STRICT", "INFORMATIONAL"}
    assert set(result["behaviorClose"]) <= {"OK", "INFORMATIONAL"}
