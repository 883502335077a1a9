"""Agreements as code: the YAML agreements, the policies they refer to, and their checker.

Public surface::

    check_agreements(agreements, policies) -> (Registry, [Problem])  # never raises for content
    load_registry(agreements, policies) -> Registry       # AgreementInvalid on any problem
    Registry.agreement(id) -> Agreement                   # NotFound if unknown

The file formats are documented in docs/agreements.md.
"""

from gateway.agreements.loader import Problem, Registry, check_agreements, load_registry
from gateway.agreements.models import (
    Agreement,
    AgreementDataset,
    AgreementDocument,
    Budget,
    CodeSpec,
    ColumnSpec,
    DatasetSchema,
    Disclosure,
    DisclosureProfile,
    Hierarchy,
    HierarchyLevel,
    Normalisation,
    Party,
    RecipientFields,
    ReportSpec,
    ValueRange,
)

__all__ = [
    "Agreement",
    "AgreementDataset",
    "AgreementDocument",
    "Budget",
    "CodeSpec",
    "ColumnSpec",
    "DatasetSchema",
    "Disclosure",
    "DisclosureProfile",
    "Hierarchy",
    "HierarchyLevel",
    "Normalisation",
    "Party",
    "Problem",
    "RecipientFields",
    "Registry",
    "ReportSpec",
    "ValueRange",
    "check_agreements",
    "load_registry",
]
