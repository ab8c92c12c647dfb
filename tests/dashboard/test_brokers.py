"""One smoke test per broker transport: the same pages, on Kafka (Tansu) and NATS
JetStream, showing what the CLI shows; the dashboard only calls the shared functions."""

from __future__ import annotations

import json

import pytest

from tests.conftest import log_url
from tests.dashboard.conftest import Client, seed
from tests.dashboard.test_pages import cell
from tests.test_cli import tidings
from tidings import dashboard

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("kind", ["kafka", "nats"])
async def test_the_pages_render_on_a_broker(request: pytest.FixtureRequest, kind: str) -> None:
    url = log_url(request, partitions=2, kind=kind)
    seeded = await seed(url)
    client = Client(dashboard.app(seeded.url))
    try:
        overview = await client.get("/")
        assert overview.status_code == 200, overview.text
        result = tidings("groups", "--json", url=seeded.url)
        assert result.returncode == 0, result.stderr
        for x in json.loads(result.stdout):
            row = f'data-group="{x["group"]}" data-topic="{x["topic"]}"'
            for field in ("lag", "dlq", "status"):
                assert cell(overview.text, row, field) == str(x[field]), (x, field)
        for path in ("/groups/mail", "/groups/mail/dead-letters", "/events/notes",
                     f"/trace?id={seeded.correlation}", "/catalog"):  # fmt: skip
            page = await client.get(path)
            assert page.status_code == 200, (path, page.text)
        listing = (await client.get("/groups/mail/dead-letters")).text
        assert listing.count('data-state="dead"') == 4
    finally:
        await client.close()
