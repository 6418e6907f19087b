"""`/v1/suppressions`: list, add, remove, per contact, behind the API key; a manual
suppression stops a running journey's marketing."""

from __future__ import annotations

from datetime import timedelta

from nudge.journeys.contracts import JourneyStatus
from support import Stack, cart_event, new_email, new_id

API = {"Authorization": "Bearer test-key"}


async def test_add_list_and_remove(stack: Stack) -> None:
    email = new_email()
    await stack.post(cart_event(email, new_id("cart")))
    added = await stack.http.post(
        "/v1/suppressions", json={"email": email.upper(), "details": "asked by phone"}, headers=API
    )
    assert added.status_code == 201, added.text
    body = added.json()
    assert (body["email"], body["reason"], body["source"], body["blocks"]) == (
        email,
        "manual",
        "api",
        "marketing",
    )
    again = await stack.http.post("/v1/suppressions", json={"email": email}, headers=API)
    assert again.status_code == 201 and again.json()["id"] == body["id"]  # idempotent
    await stack.http.post(
        "/v1/suppressions", json={"email": email, "reason": "hard_bounce"}, headers=API
    )

    everyone = await stack.http.get("/v1/suppressions?reason=manual&limit=1000", headers=API)
    assert body["id"] in [s["id"] for s in everyone.json()["suppressions"]]
    mine = await stack.http.get(f"/v1/contacts/{email}/suppressions", headers=API)
    assert [s["reason"] for s in mine.json()["suppressions"]] == ["manual", "hard_bounce"]

    removed = await stack.http.delete(f"/v1/suppressions/{email}?reason=manual", headers=API)
    assert removed.json() == {"removed": 1}
    mine = await stack.http.get(f"/v1/contacts/{email}/suppressions", headers=API)
    assert [s["reason"] for s in mine.json()["suppressions"]] == ["hard_bounce"]
    removed = await stack.http.delete(f"/v1/suppressions/{email}", headers=API)
    assert removed.json() == {"removed": 1}


async def test_errors_and_auth(stack: Stack) -> None:
    assert (await stack.http.get("/v1/suppressions")).status_code == 401
    unknown = await stack.http.post("/v1/suppressions", json={"email": new_email()}, headers=API)
    assert unknown.status_code == 404
    bad = await stack.http.post(
        "/v1/suppressions", json={"email": new_email(), "reason": "bored"}, headers=API
    )
    assert bad.status_code == 422 and bad.json()["error"]["fields"][0]["field"] == "reason"
    missing = await stack.http.delete(f"/v1/suppressions/{new_email()}", headers=API)
    assert missing.status_code == 404


async def test_a_manual_suppression_stops_a_running_journey(stack: Stack) -> None:
    email = new_email()
    response = await stack.post(cart_event(email, new_id("cart")))
    [wid] = response.json()["results"][0]["journeys"]
    await stack.env.sleep(timedelta(hours=3))
    assert len(stack.mail_to(email)) == 1
    await stack.http.post("/v1/suppressions", json={"email": email}, headers=API)
    state = await stack.finish(wid)
    assert (state.status, state.exit_reason) == (JourneyStatus.EXITED, "suppressed")
    assert len(stack.mail_to(email)) == 1
