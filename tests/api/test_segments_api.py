"""`/v1/segments` and `/v1/contacts/{email}/segments` over HTTP, and segment membership moved by
`POST /v1/events`: an event moves its contact at once, and an entry into a segment that a flow
declares in `segment_triggers` starts that flow's journey (a test-only flow, on a real worker)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from sqlalchemy import select
from temporalio import workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from conftest import open_stack
from nudge.dev.mailcatcher import MailCatcher
from nudge.journeys.contracts import JourneyInput, JourneyState, JourneyStatus
from nudge.storage.models import JourneyRecord, SegmentChange, utcnow
from support import Stack, journey_id, new_email, new_id, order_event
from workflows.journey import Journey

AUTH = {"Authorization": "Bearer test-key"}


@workflow.defn(name="test_vip_welcome", sandboxed=False)
class VipWelcome(Journey):
    """Test-only: a journey for every contact who becomes a VIP."""

    flow = "test_vip_welcome"
    segment_triggers = ("vip",)

    @workflow.run
    async def run(self, journey: JourneyInput) -> JourneyState:
        return await self.play(journey, self.story)

    async def story(self) -> None:
        await self.wait(hours=1)


@pytest_asyncio.fixture(loop_scope="session")
async def vip_stack(
    time_env: WorkflowEnvironment, temporal: Client, db_url: str, mailcatcher: MailCatcher
) -> AsyncIterator[Stack]:
    """The stack with one flow only, the test VIP flow, on the API and on the worker."""
    async with open_stack(time_env, temporal, db_url, mailcatcher, flows=[VipWelcome]) as stack:
        yield stack


def tagged_event(email: str, tag: str, first_name: str = "Ana", **contact: Any) -> dict[str, Any]:
    return {
        "id": new_id("evt"),
        "type": "customer_subscribed",
        "occurred_at": "2026-11-23T09:00:00Z",
        "contact": {"email": email, "first_name": first_name, "tags": [tag], **contact},
    }


async def segments_of(stack: Stack, email: str) -> list[str]:
    response = await stack.http.get(f"/v1/contacts/{email}/segments", headers=AUTH)
    assert response.status_code == 200, response.text
    return [s["id"] for s in response.json()["segments"]]


# ---- the API -------------------------------------------------------------------------------


async def test_create_list_preview_members_delete(stack: Stack) -> None:
    tag = f"t-{uuid.uuid4().hex[:8]}"
    emails = [new_email() for _ in range(3)]
    for i, email in enumerate(emails):
        response = await stack.post(tagged_event(email, tag, first_name=f"N{i}"))
        assert response.status_code == 202, response.text
    definition = {"all": [{"kind": "tag", "tag": tag}, {"kind": "consent", "in": ["subscribed"]}]}

    preview = await stack.http.post(
        "/v1/segments/preview", json={"definition": definition}, headers=AUTH
    )
    assert preview.status_code == 200, preview.text
    assert preview.json()["count"] == 3
    assert [c["email"] for c in preview.json()["sample"]] == emails  # by contact id
    assert [c["first_name"] for c in preview.json()["sample"]] == ["N0", "N1", "N2"]
    nobody = await stack.http.post(
        "/v1/segments/preview",
        json={"definition": {"kind": "tag", "tag": f"{tag}-none"}},
        headers=AUTH,
    )
    assert nobody.json() == {"count": 0, "sample": []}

    sid = f"seg_{uuid.uuid4().hex[:8]}"
    created = await stack.http.post(
        "/v1/segments", json={"id": sid, "name": "Tagged", "definition": definition}, headers=AUTH
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["id"], body["members"], body["builtin"], body["time_based"]) == (
        sid,
        3,
        False,
        False,
    )
    assert body["definition"] == definition

    listed = (await stack.http.get("/v1/segments", headers=AUTH)).json()["segments"]
    by_id = {s["id"]: s for s in listed}
    assert by_id[sid]["members"] == 3
    assert {"vip", "lapsed_30", "new_subscribers"} <= set(by_id)
    assert by_id["lapsed_30"]["builtin"] and by_id["lapsed_30"]["time_based"]
    got = await stack.http.get(f"/v1/segments/{sid}", headers=AUTH)
    assert got.json()["members"] == 3

    # Keyset pagination by contact id.
    first = (await stack.http.get(f"/v1/segments/{sid}/members?limit=2", headers=AUTH)).json()
    assert [m["email"] for m in first["members"]] == emails[:2]
    second = (
        await stack.http.get(
            f"/v1/segments/{sid}/members?limit=2&after={first['next']}", headers=AUTH
        )
    ).json()
    assert [m["email"] for m in second["members"]] == emails[2:]
    assert second["next"] is None
    assert all(m["entered_at"] for m in first["members"] + second["members"])

    # A new event moves its contact into the custom segment at once.
    late = new_email()
    await stack.post(tagged_event(late, tag))
    assert sid in await segments_of(stack, late)
    assert (await stack.http.get(f"/v1/segments/{sid}", headers=AUTH)).json()["members"] == 4

    deleted = await stack.http.delete(f"/v1/segments/{sid}", headers=AUTH)
    assert deleted.status_code == 204
    assert (await stack.http.get(f"/v1/segments/{sid}", headers=AUTH)).status_code == 404
    assert (await stack.http.get(f"/v1/segments/{sid}/members", headers=AUTH)).status_code == 404
    assert sid not in await segments_of(stack, late)


async def test_invalid_definitions_get_422_naming_the_condition(stack: Stack) -> None:
    bad = {
        "id": f"seg_{uuid.uuid4().hex[:8]}",
        "name": "Bad",
        "definition": {
            "all": [
                {"kind": "orders", "count": {"gte": 3}},
                {"kind": "orders", "count": {"at_least": 3}},
            ]
        },
    }
    response = await stack.http.post("/v1/segments", json=bad, headers=AUTH)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid"
    fields = [f["field"] for f in error["fields"]]
    assert "definition.all.1.count.at_least" in fields
    assert "definition.all.1.count.at_least" in error["message"]

    for definition, field in [
        ({"not": {"kind": "lapsed"}}, "definition.not.kind"),
        ({"kind": "orders", "total": {"gt": 500.5}}, "definition.total.gt"),
        ({"kind": "viewed_product", "within_days": -1}, "definition.within_days"),
    ]:
        response = await stack.http.post(
            "/v1/segments/preview", json={"definition": definition}, headers=AUTH
        )
        assert response.status_code == 422, definition
        assert field in [f["field"] for f in response.json()["error"]["fields"]], response.text

    for body, field in [
        ({"id": "Bad Id", "name": "x", "definition": {"kind": "tag", "tag": "a"}}, "id"),
        ({"id": "ok", "definition": {"kind": "tag", "tag": "a"}}, "name"),
        ({"id": "ok", "name": "x"}, "definition"),
    ]:
        response = await stack.http.post("/v1/segments", json=body, headers=AUTH)
        assert response.status_code == 422
        assert field in [f["field"] for f in response.json()["error"]["fields"]]
    not_json = await stack.http.post("/v1/segments", content=b"{", headers=AUTH)
    assert not_json.status_code == 422


async def test_conflicts_not_found_and_auth(stack: Stack) -> None:
    sid = f"seg_{uuid.uuid4().hex[:8]}"
    body = {"id": sid, "name": "Once", "definition": {"kind": "tag", "tag": "once"}}
    assert (await stack.http.post("/v1/segments", json=body, headers=AUTH)).status_code == 201
    again = await stack.http.post("/v1/segments", json=body, headers=AUTH)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "conflict"
    builtin = await stack.http.post("/v1/segments", json=body | {"id": "vip"}, headers=AUTH)
    assert builtin.status_code == 409

    undeletable = await stack.http.delete("/v1/segments/vip", headers=AUTH)
    assert undeletable.status_code == 409
    assert "built-in" in undeletable.json()["error"]["message"]
    assert (await stack.http.get("/v1/segments/vip", headers=AUTH)).status_code == 200
    assert (await stack.http.delete("/v1/segments/nope", headers=AUTH)).status_code == 404
    missing = await stack.http.get(f"/v1/contacts/{new_email()}/segments", headers=AUTH)
    assert missing.status_code == 404
    for query in ("limit=0", "limit=1001", f"after={2**63}", "after=-1"):
        bad_page = await stack.http.get(f"/v1/segments/vip/members?{query}", headers=AUTH)
        assert bad_page.status_code == 422, query

    for method, path in [
        ("GET", "/v1/segments"),
        ("POST", "/v1/segments"),
        ("POST", "/v1/segments/preview"),
        ("GET", "/v1/segments/vip"),
        ("DELETE", f"/v1/segments/{sid}"),
        ("GET", "/v1/segments/vip/members"),
        ("GET", "/v1/contacts/a@example.com/segments"),
    ]:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = await stack.http.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, (method, path)
    assert (await stack.http.get(f"/v1/segments/{sid}", headers=AUTH)).status_code == 200


async def test_openapi_publishes_the_definition_schema(stack: Stack) -> None:
    schema = (await stack.http.get("/openapi.json")).json()
    components = schema["components"]["schemas"]
    assert {"SegmentIn", "PreviewIn", "OrdersCondition", "AllOf"} <= set(components)
    body = schema["paths"]["/v1/segments"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/SegmentIn"}


# ---- ingestion moves memberships -----------------------------------------------------------


def order(email: str, total: str = "49.00") -> dict[str, Any]:
    event = order_event(email, new_id("order"))
    event["order"]["total"] = total
    return event


async def test_an_order_moves_its_contact_at_once(stack: Stack) -> None:
    email = new_email()
    await stack.post(order(email))
    assert {"one_time_buyers"} <= set(await segments_of(stack, email))
    assert "repeat_buyers" not in await segments_of(stack, email)

    await stack.post(order(email))
    now_in = set(await segments_of(stack, email))
    assert "repeat_buyers" in now_in and "one_time_buyers" not in now_in
    assert "vip" not in now_in

    await stack.post(order(email))
    assert "vip" in await segments_of(stack, email)

    big = new_email()
    await stack.post(order(big, total="500.00"))  # VIP by spend, on the first order
    assert {"vip", "one_time_buyers"} <= set(await segments_of(stack, big))


async def test_entering_a_segment_starts_the_flow_that_it_triggers(vip_stack: Stack) -> None:
    stack = vip_stack
    email = new_email()
    for _ in range(2):
        response = await stack.post(order(email))
        assert response.json()["results"][0]["journeys"] == []
    response = await stack.post(order(email))
    [wid] = response.json()["results"][0]["journeys"]
    contact_id = (await stack.http.get(f"/v1/contacts/{email}/segments", headers=AUTH)).json()[
        "contact_id"
    ]
    assert wid == await journey_id(stack, "test_vip_welcome", contact_id, "vip")

    async with stack.sessions() as session:
        change = await session.scalar(
            select(SegmentChange).where(
                SegmentChange.contact_id == contact_id, SegmentChange.segment_id == "vip"
            )
        )
        row = await session.scalar(select(JourneyRecord).where(JourneyRecord.workflow_id == wid))
    assert change is not None and change.change == "entered" and change.routed_at is not None
    assert row is not None
    assert (row.flow, row.trigger_event_id) == ("test_vip_welcome", f"segment:vip:{change.id}")

    # Still a VIP: a fourth order is no entry, and starts nothing.
    response = await stack.post(order(email))
    assert response.json()["results"][0]["journeys"] == []

    state = await stack.finish(wid)
    assert (state.flow, state.key, state.status) == (
        "test_vip_welcome",
        "vip",
        JourneyStatus.COMPLETED,
    )


async def test_an_entry_left_unrouted_by_a_crash_is_routed_by_the_next_event(
    vip_stack: Stack,
) -> None:
    stack = vip_stack
    email = new_email()
    await stack.post(order(email))
    contact_id = (await stack.http.get(f"/v1/contacts/{email}/segments", headers=AUTH)).json()[
        "contact_id"
    ]
    # As if the API died after committing the entry, before Temporal heard of it.
    async with stack.sessions.begin() as session:
        session.add(
            SegmentChange(segment_id="vip", contact_id=contact_id, change="entered", at=utcnow())
        )
    response = await stack.post(tagged_event(email, "any"))
    assert response.json()["results"][0]["journeys"] == [
        await journey_id(stack, "test_vip_welcome", contact_id, "vip")
    ]
    async with stack.sessions() as session:
        pending = await session.scalar(
            select(SegmentChange).where(
                SegmentChange.contact_id == contact_id, SegmentChange.routed_at.is_(None)
            )
        )
    assert pending is None
