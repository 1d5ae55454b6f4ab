"""incident.io's alert event payload (`AlertEventsCreateHTTPPayloadV2`) and its error shape.

One definition serves both sides: the service checks every payload it renders against
`AlertEventPayload` before sending, and the incident.io double validates what it
receives with the same model, so the two cannot drift apart. The model follows the
OpenAPI text in shared/reference: `title` and `status` required, `status` one of
`firing`/`resolved`, `metadata` a free-form object, no type coercion.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

AlertStatus = Literal["firing", "resolved"]

# streamer's own bounds on rendered fields. incident.io documents none; these keep an
# alert readable on a phone and a request far below any proxy's body limit. A template
# that renders past one is a template error for that event (see routing).
FIELD_LIMITS: dict[str, int] = {
    "title": 1_000,
    "deduplication_key": 500,
    "description": 20_000,
    "source_url": 2_048,
}


class AlertEventPayload(BaseModel):
    # strict: the API takes JSON types as they are ("1" is not 1); unknown fields are
    # ignored, as the OpenAPI schema does not forbid them.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    title: str
    status: AlertStatus
    deduplication_key: str | None = None
    description: str | None = None
    metadata: dict[str, Any] | None = None
    source_url: str | None = None


class FieldError(BaseModel):
    """One entry of an incident.io error body's `errors` list."""

    code: str
    message: str
    field: str | None = None

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            entry["source"] = {"field": self.field}
        return entry


def payload_errors(body: object, *, require_deduplication_key: bool) -> list[FieldError]:
    """What is wrong with `body` as an alert event, in incident.io's terms; [] if nothing."""
    if not isinstance(body, dict):
        return [FieldError(code="invalid_value", message="The request body must be a JSON object")]
    errors: list[FieldError] = []
    try:
        AlertEventPayload.model_validate(body)
    except ValidationError as e:
        for problem in e.errors():
            field = ".".join(str(part) for part in problem["loc"]) or None
            missing = problem["type"] == "missing"
            errors.append(
                FieldError(
                    code="is_required" if missing else "invalid_value",
                    message=f"{field} is required" if missing else f"{field}: {problem['msg']}",
                    field=field,
                )
            )
    key_missing = body.get("deduplication_key") in (None, "")
    already_said = any(error.field == "deduplication_key" for error in errors)
    if require_deduplication_key and key_missing and not already_said:
        errors.append(
            FieldError(
                code="is_required",
                message="deduplication_key is required for this alert source",
                field="deduplication_key",
            )
        )
    return errors
