"""RFC 6455 and 7692 conformance: the Autobahn cases of groups 1 to 13 against fws_server -f echo.

Every case but the 72 compression cases of 32 KiB messages and more
(``autobahn.LARGEST_COMPRESSED``, 59 % of the suite's time: about 5 of its 9
minutes on a slow 2-core machine); ``make autobahn`` runs those too.
"""

from __future__ import annotations

import pytest
from autobahn import LARGEST_COMPRESSED, run_autobahn, summary
from helpers import require_binary


@pytest.mark.timeout(1600)
def test_autobahn_groups_1_to_13_have_no_failed_case(tmp_path):
    require_binary("kosoku", "pip install kosoku; make install does")
    result = run_autobahn(tmp_path / "autobahn", excluded=LARGEST_COMPRESSED)
    print(summary(result))
    assert sum(result["behavior"].values()) >= 517 - 72, summary(result)  # the suite really ran
    groups = result["groups"]
    assert groups["12"] == 90 - 30 and groups["13"] == 126 - 42, groups  # compression ran
    assert result["failed"] == [], summary(result)
    assert set(result["behavior"]) <= {"OK", "NON-STRICT", "INFORMATIONAL"}
    assert set(result["behaviorClose"]) <= {"OK", "INFORMATIONAL"}
