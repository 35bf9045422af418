"""`spec.workspaces` of the model: MLflow workspaces from Kubernetes namespaces.

`mode: Namespaces` makes each namespace the server admits (`auth.allowedNamespaces`, and
`namespaceSelector` when set) an MLflow workspace: the server runs with
`--enable-workspaces --workspace-store-uri k8s-namespaces://` and the plugin's read-only
workspace provider. `namespaceSelector` is a Kubernetes label selector; the plugin's ini
takes it in the API server's string form (`renders_selector`).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from mlflow_operator.inputs import SpecError
from mlflow_operator.model_base import SpecModel

WorkspaceMode = Literal["None", "Namespaces"]
# The label value form (an empty value is allowed in matchLabels).
_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# A label key: optional DNS-subdomain prefix and '/', then a name of up to 63 characters.
_LABEL_KEY = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"


class LabelSelectorRequirement(SpecModel):
    key: str = Field(min_length=1, max_length=317, pattern=_LABEL_KEY)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _check_values(self) -> LabelSelectorRequirement:
        needs_values = self.operator in ("In", "NotIn")
        if needs_values != bool(self.values):
            raise SpecError("InvalidWorkspaces", f"workspaces.namespaceSelector.matchExpressions: {self.key!r}:"
                            f" operator {self.operator} {'needs' if needs_values else 'takes no'} values")
        for value in self.values:
            if len(value) > 63 or not re.match(_LABEL_VALUE, value):
                raise SpecError("InvalidWorkspaces", f"workspaces.namespaceSelector.matchExpressions: {value!r}"
                                " is not a label value")
        return self


class LabelSelector(SpecModel):
    match_labels: dict[str, str] = Field(default_factory=dict, max_length=32)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=32)

    @model_validator(mode="after")
    def _check_labels(self) -> LabelSelector:
        for key, value in self.match_labels.items():
            if len(key) > 317 or not re.match(_LABEL_KEY, key) or len(value) > 63 or not re.match(_LABEL_VALUE, value):
                raise SpecError("InvalidWorkspaces",
                                f"workspaces.namespaceSelector.matchLabels: {key}={value} is not a label")
        return self

    def render(self) -> str:
        """The selector in the API server's string form (`labelSelector=` of a list call)."""
        parts = [f"{key}={value}" for key, value in sorted(self.match_labels.items())]
        for requirement in self.match_expressions:
            if requirement.operator == "Exists":
                parts.append(requirement.key)
            elif requirement.operator == "DoesNotExist":
                parts.append(f"!{requirement.key}")
            else:
                operator = "in" if requirement.operator == "In" else "notin"
                parts.append(f"{requirement.key} {operator} ({','.join(requirement.values)})")
        return ",".join(parts)


class Workspaces(SpecModel):
    mode: WorkspaceMode = "None"
    namespace_selector: LabelSelector | None = None

    @property
    def enabled(self) -> bool:
        return self.mode == "Namespaces"
