"""Async TAP jobs of the simulated service (UWS 1.1): the job record and its XML document.

A job is created PENDING, runs to COMPLETED (with the result VOTable) or ERROR (with the
message) when its phase is set to RUN, and can be ABORTED. Timestamps are fixed: ERFA warns
("dubious year") on dates past its leap-second table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from xml.sax.saxutils import escape as xml_escape


@dataclass
class UwsJob:
    """One async query: its ADQL, request parameters, phase and outcome."""

    job_id: str
    query: str
    params: dict[str, str]
    phase: str = "PENDING"
    result: bytes | None = None
    error: str = ""
    created: float = field(default_factory=time.time)


_TIMESTAMP = "2025-06-01T00:00:00Z"


def uws_job_xml(job: UwsJob, job_url: str) -> bytes:
    """The UWS job document of ``job`` served at ``job_url``."""
    ts = _TIMESTAMP
    results = ""
    if job.phase == "COMPLETED":
        results = f'<uws:result id="result" xlink:href="{xml_escape(job_url)}/results/result"/>'
    error = ""
    if job.phase == "ERROR":
        error = (
            '<uws:errorSummary type="fatal" hasDetail="false">'
            f"<uws:message>{xml_escape(job.error)}</uws:message></uws:errorSummary>"
        )
    params = "".join(
        f'<uws:parameter id="{xml_escape(k.lower())}">{xml_escape(v)}</uws:parameter>' for k, v in job.params.items()
    )
    text = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<uws:job xmlns:uws="http://www.ivoa.net/xml/UWS/v1.0" xmlns:xlink="http://www.w3.org/1999/xlink" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" version="1.1">'
        f"<uws:jobId>{job.job_id}</uws:jobId>"
        '<uws:runId/><uws:ownerId xsi:nil="true"/>'
        f"<uws:phase>{job.phase}</uws:phase>"
        '<uws:quote xsi:nil="true"/>'
        f"<uws:creationTime>{ts}</uws:creationTime>"
        f"<uws:startTime>{ts}</uws:startTime><uws:endTime>{ts}</uws:endTime>"
        "<uws:executionDuration>600</uws:executionDuration>"
        f"<uws:destruction>{ts}</uws:destruction>"
        f"<uws:parameters>{params}</uws:parameters>"
        f"<uws:results>{results}</uws:results>{error}"
        "</uws:job>"
    )
    return text.encode()
