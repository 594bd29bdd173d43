"""Vocational skill level certificates (职业技能等级证书): issue, list, and public verification."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Path, Request

from services.training import domain, usecases
from services.training.api import views
from services.training.api.deps import Reader, Writer, run_write
from shared.http import Db
from shared.pagination import Cursor, Limit, Page, decode_cursor, page
from shared.regions import RegionCode

router = APIRouter(tags=["certificates"])


@router.post(
    "/certificates",
    status_code=201,
    response_model=views.Certificate,
    summary="Issue a certificate (职业技能等级证书) for a passed enrolment",
)
async def issue_certificate(body: domain.CertificateIn, request: Request, actor: Writer):
    async def command(conn, actor, today):
        return views.certificate(await usecases.issue_certificate(conn, body, actor, today))

    return await run_write(request, actor, "certificates.issue", body.model_dump(mode="json"), command, 201)


@router.post(
    "/sessions/{session_id}/certificates",
    response_model=views.SessionCertificatesIssued,
    summary="Issue certificates to every passed enrolment of a session that has none",
)
async def issue_session_certificates(
    session_id: uuid.UUID, request: Request, actor: Writer, body: domain.SessionCertificatesIn | None = None
):
    cmd = body or domain.SessionCertificatesIn()

    async def command(conn, actor, today):
        return views.session_certificates(
            session_id, await usecases.issue_session_certificates(conn, session_id, cmd, actor, today)
        )

    return await run_write(
        request,
        actor,
        "certificates.issue_session",
        {"session_id": str(session_id), **cmd.model_dump(mode="json")},
        command,
    )


@router.get("/certificates", response_model=Page[views.Certificate], summary="Certificates, filtered, cursor-paginated")
async def list_certificates(
    db: Db,
    actor: Reader,
    member_id: uuid.UUID | None = None,
    session_id: uuid.UUID | None = None,
    region_code: RegionCode | None = None,
    limit: int = Limit,
    cursor: str | None = Cursor,
):
    rows = await usecases.list_certificates(
        db,
        actor,
        region_code=region_code,
        after=decode_cursor(cursor),
        limit=limit,
        member_id=member_id,
        session_id=session_id,
    )
    return page(rows, limit, key=lambda r: r["seq"], view=views.certificate)


@router.get(
    "/certificates/{serial}",
    response_model=views.PublicCertificate,
    summary="Verify a certificate by its serial (public; no personal data)",
)
async def verify_certificate(db: Db, serial: str = Path(max_length=64)):
    return views.public_certificate(await usecases.verify_certificate(db, serial))
