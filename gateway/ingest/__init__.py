"""Uploads: reading extracts, validating them, and storing them pseudonymised.

Public surface::

    upload_extract(gateway, *, agreement_id, party, dataset, path, actor, ...) -> receipt
    UploadRefused      the file was refused whole; ``.receipt`` lists every problem
"""

from gateway.ingest.upload import UploadProblem, UploadRefused, upload_extract

__all__ = ["UploadProblem", "UploadRefused", "upload_extract"]
