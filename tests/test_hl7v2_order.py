"""Messages from one source about one patient are applied in the order received, on SQLite
and PostgreSQL: a file of updates to one patient, taken in one ingest (many messages a
batch, several threads), ends with the last one's values, each version in turn."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from hub.ingest.mapping import resource_id
from hub.ingest.service import IngestService
from hub.interactions.context import Context
from hub.settings import Settings

UPDATES = 12


def adt(event: str, control_id: str, family: str, patient: str = "ORD-1") -> bytes:
    return (
        f"MSH|^~\\&|OrderApp|OrderFac|HUB|HUBFAC|20240102030405||ADT^{event}^ADT_A01|"
        f"{control_id}|P|2.5.1\r"
        f"EVN|{event}|20240102030405\r"
        f"PID|1||{patient}^^^MRN^MR||{family}^Pat||19800101|F\r"
        f"PV1|1|I|||||||||||||||||V-{patient}\r"
    ).encode()


@pytest.fixture()
def service(ctx: Context, settings: Settings) -> Iterator[IngestService]:
    svc = IngestService(ctx, settings, dispatcher="threads")
    yield svc
    svc.close()


def test_one_patients_messages_apply_in_the_order_received(
    service: IngestService, client: TestClient
) -> None:
    # Interleaved with another patient's, so that the batch holds more than one subject.
    messages = [adt("A01", "c-0", "Family0")]
    for n in range(1, UPDATES + 1):
        messages.append(adt("A08", f"c-{n}", f"Family{n}"))
        messages.append(adt("A08", f"o-{n}", f"Other{n}", patient="ORD-2"))
    summary = service.ingest(
        "hl7v2", None, io.BytesIO(b"\x0b" + b"\x1c\r\x0b".join(messages) + b"\x1c\r"), "file"
    )
    done = service.wait(summary.message_ids, timeout=120)
    assert done.done == len(messages), done.errors

    patient = resource_id("OrderApp/OrderFac", "Patient", ["ORD-1"])
    current = client.get(f"/fhir/Patient/{patient}").json()
    assert current["name"][0]["family"] == f"Family{UPDATES}"
    history = client.get(f"/fhir/Patient/{patient}/_history", params={"_count": 100}).json()
    families = [e["resource"]["name"][0]["family"] for e in history["entry"]]
    # Newest first: every message wrote a version, in the order the messages came.
    assert families == [f"Family{n}" for n in range(UPDATES, -1, -1)]
