from __future__ import annotations

import httpx


async def test_binding_roundtrip(api: httpx.AsyncClient, service_sid: str) -> None:
    created = await api.post(
        f"/v1/Services/{service_sid}/Bindings",
        data={
            "Identity": "u1",
            "BindingType": "sms",
            "Address": "+14155550100",
            "Tag": ["vip", "eu"],
        },
    )
    assert created.status_code == 201, created.text
    listed = await api.get(f"/v1/Services/{service_sid}/Bindings", params={"Tag": ["sms", "vip"]})
    assert [b["sid"] for b in listed.json()["bindings"]] == [created.json()["sid"]]
