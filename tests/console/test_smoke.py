from __future__ import annotations

import pytest

from tests.console.conftest import browser

PAGES = [
    "/",
    "/console/bills/",
    "/console/usage/",
    "/console/transactions/",
    "/console/tokens/",
    "/console/organizations/",
    "/console/settings/",
    "/redeem/",
    "/referrals/",
]


@pytest.mark.parametrize("path", PAGES)
def test_page_renders(user, path) -> None:
    response = browser(user).get(path)
    assert response.status_code == 200, response.content[:3000]
