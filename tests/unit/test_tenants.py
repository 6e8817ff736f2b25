"""Tenants: named tokens, isolation of one tenant's jobs from another's, per-tenant quotas, the fair queue and the
fair share of AMI_MAX_PENDING. The app's own code with the fake pools (no Ray); the queue on its own."""

from __future__ import annotations

import copy as copy_module
import logging
import random
from pathlib import Path
from typing import Any

import pytest

from server.access import RedactTokens
from server.dispatcher import check_share
from server.errors import PoolFull, TenantQuota
from server.fairqueue import FairQueue
from server.jobs import Job
from server.tenants import Quotas, parse_token
from tests.unit.fakes import unit_client, unit_settings

A, B, OPS = "alice:a-secret", "bob:b-secret", "ops:o-secret"


def bearer(entry: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {entry.partition(':')[2]}"}


def tenants_settings(tmp_path: Path, **changes: Any) -> Any:
    return unit_settings(tmp_path, tokens=(A, B), operator_tokens=(OPS,), **changes)


def test_a_token_names_its_tenant_and_a_bare_one_is_named_by_its_hash_never_itself() -> None:
    assert parse_token("alice:a-secret") == ("alice", "a-secret")
    name, secret = parse_token("bare-secret-value")
    assert secret == "bare-secret-value" and name.startswith("token-") and "secret" not in name
    assert parse_token("bare-secret-value")[0] == name, "the same token is the same tenant after a restart"
    assert parse_token("not a name:x")[1] == "not a name:x", "a colon after no valid name is part of the secret"


def test_another_tenants_job_is_answered_as_one_that_does_not_exist(tmp_path: Path) -> None:
    with unit_client(tenants_settings(tmp_path)) as client:
        jobs = {}
        for entry in (A, B):
            with client.websocket_connect("/ws", headers=bearer(entry)) as ws:
                ws.send_json({"op": "submit", "kind": "echo", "args": {"hold": True}})
                jobs[entry] = ws.receive_json()["job"]
        for mine, theirs in ((A, B), (B, A)):  # both directions
            with client.websocket_connect("/ws", headers=bearer(mine)) as ws:
                foreign, never = jobs[theirs], "0" * 32
                for op in ("status", "cancel"):
                    answers = []
                    for job in (foreign, never):
                        ws.send_json({"op": op, "job": job, "ref": "x"})
                        answers.append(ws.receive_json())
                    assert [a["code"] for a in answers] == ["not_found", "not_found"]
                    assert answers[0]["message"].replace(foreign, never) == answers[1]["message"]
                ws.send_json({"op": "watch", "jobs": [foreign]})
                assert ws.receive_json()["code"] == "not_found"
                ws.send_json({"op": "status", "job": jobs[mine]})
                assert ws.receive_json()["state"] == "running", "its own job it sees"
            for path in (f"/jobs/{jobs[theirs]}", f"/task/{jobs[theirs]}"):
                foreign_answer = client.get(path, headers=bearer(mine))
                never_answer = client.get(path.replace(jobs[theirs], "0" * 32), headers=bearer(mine))
                assert foreign_answer.status_code == never_answer.status_code == 404, path
                assert foreign_answer.json() == {**never_answer.json(), **({"id": jobs[theirs]} if "task" in path
                                                                           else {})}
            assert client.get(f"/jobs/{jobs[mine]}", headers=bearer(mine)).status_code == 200
        # The operator sees both, and may cancel either.
        with client.websocket_connect("/ws", headers=bearer(OPS)) as ws:
            for job in jobs.values():
                ws.send_json({"op": "status", "job": job})
                assert ws.receive_json()["state"] == "running"
                assert client.get(f"/jobs/{job}", headers=bearer(OPS)).status_code == 200
            ws.send_json({"op": "cancel", "job": jobs[A]})
            assert ws.receive_json()["status"] == "cancelled"


def test_operator_endpoints_are_for_operators_and_probes_need_no_token(tmp_path: Path) -> None:
    with unit_client(tenants_settings(tmp_path)) as client:
        for path in ("/metrics", "/pools", "/config.json"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers=bearer(A)).status_code == 403, path
            if path != "/pools":  # the fake pools have nothing to describe
                assert client.get(path, headers=bearer(OPS)).status_code == 200, path
        for path, field in (("/healthz", "ok"), ("/readyz", "ready")):
            anonymous = client.get(path)
            assert anonymous.status_code == 200 and anonymous.json() == {field: True}, path
        assert client.get("/readyz", headers=bearer(OPS)).json() == {"ready": True, "reasons": []}
    # Without operator tokens, any valid token may use them, as before.
    with unit_client(unit_settings(tmp_path, tokens=(A,))) as client:
        assert client.get("/metrics", headers=bearer(A)).status_code == 200


def test_quotas_refuse_one_tenant_with_retry_after_and_never_the_other(tmp_path: Path) -> None:
    settings = tenants_settings(tmp_path, tenant_max_unfinished=3, tenant_submits_per_s=1.0)  # a burst of 10
    with unit_client(settings) as client:
        with client.websocket_connect("/ws", headers=bearer(A)) as ws:
            for n in range(3):
                ws.send_json({"op": "submit", "kind": "echo", "args": {"hold": True, "n": n}})
                assert ws.receive_json()["type"] == "accepted"
            ws.send_json({"op": "submit", "kind": "echo", "args": {}, "ref": "fourth"})
            refused = ws.receive_json()
            assert (refused["code"], refused["ref"]) == ("rate_limited", "fourth")
            assert refused["retry_after_ms"] > 0 and "AMI_TENANT_MAX_UNFINISHED" in refused["message"]
            rest = client.post("/jobs", json={"kind": "echo", "args": {}}, headers=bearer(A))
            assert rest.status_code == 429 and int(rest.headers["Retry-After"]) >= 1
            assert rest.json()["error"]["retry_after_ms"] > 0
        with client.websocket_connect("/ws", headers=bearer(B)) as ws:
            answers = []
            for n in range(11):  # B's own quotas: ten a burst (its unfinished jobs end at once here)
                ws.send_json({"op": "submit", "kind": "echo", "args": {"n": n}, "ref": str(n)})
                while (frame := ws.receive_json())["type"] == "result":
                    pass
                answers.append(frame)
            assert [a["type"] for a in answers[:10]] == ["accepted"] * 10
            assert answers[10]["code"] == "rate_limited" and "AMI_TENANT_SUBMITS_PER_S" in answers[10]["message"]


def test_without_tokens_each_address_is_a_tenant_for_quotas_only(tmp_path: Path) -> None:
    with unit_client(unit_settings(tmp_path, tenant_max_unfinished=1)) as client:
        with client.websocket_connect("/ws") as ws:
            ws.send_json({"op": "submit", "kind": "echo", "args": {"hold": True}})
            job = ws.receive_json()["job"]
            ws.send_json({"op": "submit", "kind": "echo", "args": {}})
            assert ws.receive_json()["code"] == "rate_limited"
        assert client.get(f"/jobs/{job}").status_code == 200, "anyone may read a job by its id without tokens"


def test_priority_is_checked(tmp_path: Path) -> None:
    with unit_client(unit_settings(tmp_path)) as client, client.websocket_connect("/ws") as ws:
        for bad in (10, -1, "9", True, 2.5):
            ws.send_json({"op": "submit", "kind": "echo", "args": {}, "priority": bad})
            assert ws.receive_json()["code"] == "bad_request", bad
        ws.send_json({"op": "submit", "kind": "echo", "args": {}, "priority": 9})
        assert ws.receive_json()["type"] == "accepted"
        assert client.post("/jobs", json={"kind": "echo", "args": {}, "priority": 12}).status_code == 422


def jobs(tenant: str, count: int, priority: int = 5) -> list[Job]:
    return [Job("echo", {"n": n}, tenant=tenant, priority=priority) for n in range(count)]


def test_the_queue_serves_tenants_in_turn_and_a_newcomer_first() -> None:
    queue = FairQueue()
    heavy = jobs("A", 50)
    for job in heavy:
        queue.push(job)
    assert queue.pop() is heavy[0]  # A's first takes the free slot
    light = jobs("B", 2)
    queue.push(light[0])
    assert queue.position(light[0]) == 0, "B has had no turn: it is next"
    assert queue.pop() is light[0]
    queue.push(light[1])
    order = [queue.pop() for _ in range(4)]
    assert order == [heavy[1], light[1], heavy[2], heavy[3]], "then turn about: one of A's, one of B's"


def test_priority_orders_jobs_within_a_tenants_lane_only() -> None:
    queue = FairQueue()
    low, high, other = jobs("A", 3, priority=1), jobs("A", 1, priority=9)[0], jobs("B", 1, priority=0)[0]
    for job in [*low, high, other]:
        queue.push(job)
    assert queue.position(high) == 0 and queue.position(other) == 1 and queue.position(low[2]) == 4
    assert [queue.pop() for _ in range(5)] == [high, other, *low]
    assert queue.pop() is None and len(queue) == 0


def test_position_counts_the_jobs_that_go_first_and_shrinks_as_they_start() -> None:
    queue = FairQueue()
    a, b = jobs("A", 10), jobs("B", 3)
    for job in a + b:
        queue.push(job)
    assert [queue.position(job) for job in b] == [1, 3, 5]  # A arrived first: A, B, A, B, A, B
    assert queue.position(a[9]) == 12
    seen: list[int] = []
    while (place := queue.position(a[9])) not in (None, 0):
        assert place is not None
        seen.append(place)
        queue.pop()
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == len(seen)
    assert queue.pop() is a[9]


def test_a_cancelled_job_leaves_the_queue_and_a_rerun_goes_first_in_its_lane() -> None:
    queue = FairQueue()
    a = jobs("A", 3)
    for job in a:
        queue.push(job)
    assert queue.remove(a[1]) and not queue.remove(a[1]) and len(queue) == 2
    rerun = jobs("A", 1)[0]
    queue.push(rerun, front=True)
    assert [queue.pop() for _ in range(3)] == [rerun, a[0], a[2]]
    assert queue.tenants() == 0 and queue.by_tenant() == {}


def test_a_full_queue_refuses_the_tenant_over_its_share_never_a_newcomer() -> None:
    queue = FairQueue()
    for job in jobs("A", 10):
        queue.push(job)
    with pytest.raises(PoolFull, match="10 of them yours"):
        check_share(queue, "echo", "A", limit=10)
    check_share(queue, "echo", "B", limit=10)  # B holds none of it: admitted
    for job in jobs("B", 5):
        queue.push(job)
    with pytest.raises(PoolFull):
        check_share(queue, "echo", "B", limit=10)  # 5 of 15 waiting: B holds its half
    check_share(queue, "echo", "C", limit=10)
    for job in jobs("C", 5):
        queue.push(job)
    with pytest.raises(PoolFull):
        check_share(queue, "echo", "D", limit=10)  # twice the limit waits: everyone is refused


def test_quotas_count_unfinished_jobs_and_refill_submissions() -> None:
    quotas = Quotas(max_unfinished=2, submits_per_s=10.0)  # a burst of 100
    held = jobs("A", 2)
    for job in held:
        quotas.check("A", 0.0)
        quotas.count(job)
    with pytest.raises(TenantQuota, match="2 unfinished"):
        quotas.check("A", 0.0)
    quotas.release(held[0])
    quotas.release(held[0])  # released once only
    quotas.check("A", 0.0)
    for _ in range(100):
        quotas.check("B", 0.0)
    with pytest.raises(TenantQuota, match="submit again in 100 ms") as limited:
        quotas.check("B", 0.0)
    assert limited.value.retry_after_ms == 100
    quotas.check("B", 0.1)  # a tenth of a second later, one more


def test_job_ids_and_tokens_never_reach_the_access_log() -> None:
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", "/jobs/4f2a9c?token=s3cret", "1.1", 200), None)
    RedactTokens().filter(record)
    line = record.getMessage()
    assert "4f2a9c" not in line and "s3cret" not in line and "/jobs/{id}?token=***" in line


def test_a_tenant_kept_from_the_last_slot_keeps_its_turn() -> None:
    queue = FairQueue()
    a, b = jobs("A", 2), jobs("B", 1)
    for job in a:
        queue.push(job)
    assert queue.pop("A".__ne__) is None and len(queue) == 2, "only A waits: nothing is taken"
    queue.push(b[0])
    assert queue.pop("A".__ne__) is b[0]
    assert queue.pop() is a[0], "A's turn was kept"


def test_the_last_free_slot_is_kept_from_the_heaviest_tenant_while_another_uses_the_kind() -> None:
    from actors import all_kinds
    from server.pools import PRESENT_S, ActorSlot, Pool

    slot = ActorSlot("echo-0", object())
    pool = Pool(all_kinds()["echo"], capacity=4, least=1, most=1, slots=[slot])
    slot.inflight, pool.running_by["A"] = 3, 3
    pool.seen = {"A": 100.0}
    assert pool.headroom_for(100.0) is None, "nobody else uses the kind: A may have every slot"
    pool.seen["B"] = 99.0
    assert pool.headroom_for(100.0) == "A"
    assert pool.headroom_for(99.0 + PRESENT_S + 1) is None, "B left long ago"
    slot.inflight, pool.running_by["A"] = 2, 2
    assert pool.headroom_for(100.0) is None, "two free slots: A may take one"


def test_metrics_name_named_tenants_and_sum_address_tenants_as_anonymous(tmp_path: Path) -> None:
    with unit_client(tenants_settings(tmp_path)) as client:
        with client.websocket_connect("/ws", headers=bearer(A)) as ws:
            ws.send_json({"op": "submit", "kind": "echo", "args": {}})
            assert [ws.receive_json()["type"] for _ in range(2)] == ["accepted", "result"]
        text = client.get("/metrics", headers=bearer(OPS)).text
        assert 'ami_jobs_total{kind="echo",status="succeeded",tenant="alice"} 1.0' in text
        assert 'ami_pool_queued{kind="echo",tenant="anonymous"} 0.0' in text
    with unit_client(unit_settings(tmp_path)) as client:
        with client.websocket_connect("/ws") as ws:
            ws.send_json({"op": "submit", "kind": "echo", "args": {}})
            assert [ws.receive_json()["type"] for _ in range(2)] == ["accepted", "result"]
        text = client.get("/metrics").text
        assert 'tenant="anonymous"' in text and "@" not in text, "no client address becomes a label"


def test_position_is_where_the_job_really_comes_out_after_any_pushes_pops_and_cancels() -> None:
    """`position` counts, never scans: checked against popping a copy of the queue until the job comes out, after
    random pushes (tenants, priorities, re-runs at the front), starts and cancels."""
    chance = random.Random(25)
    queue, queued = FairQueue(), list[Job]()
    for step in range(1500):
        roll = chance.random()
        if roll < 0.55 or not queued:
            job = Job("echo", {"n": step}, tenant=chance.choice("ABC"), priority=chance.choice((1, 5, 5, 9)))
            queue.push(job, front=chance.random() < 0.05)
            queued.append(job)
        elif roll < 0.85:
            started = queue.pop()
            assert started is not None
            queued.remove(started)
        else:
            job = chance.choice(queued)
            assert queue.remove(job)
            queued.remove(job)
        if step % 50 == 0 and queued:
            for job in chance.sample(queued, min(5, len(queued))):
                copy = copy_module.deepcopy(queue)
                ahead = 0
                while (popped := copy.pop()) is not None and popped.id != job.id:
                    ahead += 1
                assert queue.position(job) == ahead, (step, job.tenant)
