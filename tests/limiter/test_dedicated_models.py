"""Which models the account serves on dedicated endpoints: reading Together's endpoint list
(limiter/authority/dedicated.py) and keeping it (limiter/services.py dedicated_sync)."""

from __future__ import annotations

import pytest

from limiter import services
from limiter.authority.config import config_load
from limiter.authority.dedicated import served_models
from limiter.models import ConfigVersion, DedicatedModel, UpstreamAccount

pytestmark = pytest.mark.django_db

LLAMA = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
QWEN = "Qwen/Qwen2.5-7B-Instruct-Turbo"


def test_only_serving_dedicated_endpoints_count_read_leniently():
    answer = {
        "object": "list",
        "data": [
            {
                "id": "e1",
                "name": "org/llama-1",
                "model": LLAMA,
                "type": "dedicated",
                "state": "STARTED",
            },
            {"id": "e2", "model": QWEN, "type": "dedicated", "state": "STOPPED"},
            {"id": "e3", "model": "x/serverless", "type": "serverless", "state": "STARTED"},
            {"id": "e4", "model": 42},
            "not an endpoint",
            {"id": "e5", "model": "y" * 201, "type": "dedicated"},
        ],
    }
    assert served_models(answer) == {LLAMA: "org/llama-1"}
    assert served_models([{"model": QWEN, "state": "starting"}]) == {QWEN: ""}
    assert served_models({"error": "nope"}) == {} == served_models(None)


def test_the_poll_adds_and_drops_its_rows_and_keeps_ops_marks():
    account = UpstreamAccount.objects.get(name="together")
    services.dedicated_mark(account=account, model=QWEN)

    assert services.dedicated_sync(account=account, found={LLAMA: "org/llama-1"})
    rows = {row.model: row.by_hand for row in DedicatedModel.objects.all()}
    assert rows == {LLAMA: False, QWEN: True}

    # Nothing changed: nothing written, so no configuration change either.
    version = ConfigVersion.current()
    assert not services.dedicated_sync(account=account, found={LLAMA: "org/llama-1"})
    assert ConfigVersion.current() == version

    # The endpoint stopped: its polled row goes, ops' mark stays.
    assert services.dedicated_sync(account=account, found={})
    assert list(DedicatedModel.objects.values_list("model", flat=True)) == [QWEN]
    assert ConfigVersion.current() > version


def test_the_limiters_configuration_carries_them():
    account = UpstreamAccount.objects.get(name="together")
    services.dedicated_sync(account=account, found={LLAMA: ""})
    config = config_load()
    assert config.is_dedicated(str(account.pk), LLAMA.upper())
    assert not config.is_dedicated(str(account.pk), QWEN)
    assert not config.is_dedicated(str(account.pk), "")
