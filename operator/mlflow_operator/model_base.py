"""Shared pieces of the spec model: the pydantic base class, name forms, permissions."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

Permission = Literal["READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS"]
PERMISSIONS: tuple[str, ...] = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")

DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = rf"{DNS_LABEL}(?:\.{DNS_LABEL})*"
NAMESPACE_RE = re.compile(rf"^{DNS_LABEL}$")
SERVICE_ACCOUNT_RE = re.compile(rf"^({DNS_LABEL}):({DNS_SUBDOMAIN})$")
NAMESPACE_PERMISSION_RE = re.compile(rf"^({DNS_LABEL}):([A-Z_]+)$")


class SpecModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class SecretKeyRef(SpecModel):
    name: str = Field(min_length=1, max_length=253)
    key: str = Field(default="uri", min_length=1, max_length=253)
