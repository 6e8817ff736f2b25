"""The kind contract on real Ray: a kind whose actors no node can take stops the start at once, in words."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from actors import all_kinds
from server.config import SettingsError
from server.dispatcher import Dispatcher
from server.store import MemoryStore
from server.table import JobTable
from tests.helpers import FixtureHTTP, run, settings_for


@pytest.mark.parametrize(("pool", "words"), [
    ({"num_gpus": 1}, "1 GPU"),
    ({"memory": 10**15}, "MiB of memory"),
    ({"resources": (("tpu", 1.0),)}, "1 tpu"),
])
def test_a_kind_no_node_can_take_refuses_to_start_naming_it(ray_session: None, http: FixtureHTTP, tmp_path: Path,
                                                            pool: dict[str, object], words: str) -> None:
    kind = all_kinds()["echo"]
    greedy = replace(kind, pool=replace(kind.pool, **pool))  # type: ignore[arg-type]
    settings = settings_for(http, tmp_path, pools=(("echo", 1),))

    async def scenario() -> None:
        store = MemoryStore()
        dispatcher = Dispatcher(settings, JobTable(store), {"echo": greedy}, store)
        with pytest.raises(SettingsError) as caught:
            dispatcher.start()
        assert dispatcher.pools == {}, "no actor was asked for"
        message = str(caught.value)
        assert "the echo kind asks each actor for" in message and words in message and "AMI_POOLS=echo=0" in message
        assert "\n" not in message

    run(scenario(), timeout=30)
