"""`POST /hl7v2`: HL7 v2 messages over HTTP, answered with their ACK in the body.

The same receiver as the MLLP listener (`adapters.hl7v2.receive`): the body is one
message, or several (framed or not, as `hub ingest` reads files), each checked,
committed in the group commit and acknowledged; the answer is the ACKs in order,
`application/hl7-v2`. A body the store could not commit is answered 503 with
Retry-After, its ACK an AR (nothing was stored: send it again).
"""

from __future__ import annotations

import io

from fastapi import APIRouter, Request, Response

from adapters.hl7v2.framing import split_stream
from adapters.hl7v2.receive import Receiver
from hub.errors import Invalid, UnsupportedMediaType

from .http import read_body

MEDIA_TYPES = ("application/hl7-v2", "x-application/hl7-v2+er7", "text/plain")


def router(max_body: int) -> APIRouter:
    api = APIRouter(tags=["ingestion"])

    @api.post(
        "/hl7v2",
        summary="Receive HL7 v2 messages; the answer is their ACKs",
        response_class=Response,
    )
    async def receive(request: Request) -> Response:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in MEDIA_TYPES:
            raise UnsupportedMediaType(
                f"POST /hl7v2 takes {', '.join(MEDIA_TYPES)}, not {media or 'no Content-Type'}"
            )
        messages = list(split_stream(io.BytesIO(await read_body(request, max_body))))
        if not messages:
            raise Invalid("The request holds no HL7 v2 message")
        receiver: Receiver = request.app.state.hl7v2
        client = request.client
        origin = f"POST /hl7v2 from {client.host}" if client else "POST /hl7v2"
        answers = await receiver.receive(messages, origin, always=True)
        body = b"".join(a.ack or b"" for a in answers)
        if any(a.unavailable for a in answers):
            return Response(
                body, status_code=503, media_type=MEDIA_TYPES[0], headers={"Retry-After": "1"}
            )
        return Response(body, media_type=MEDIA_TYPES[0])

    return api
