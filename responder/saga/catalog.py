"""The action catalog (VIGIL_ACTIONS, sample: deploy/actions.yaml): the only things Vigil can
ever do to a system.

Each action has a name, a description, a JSON Schema of its parameters, a risk (`low`,
`medium`, `high`), an executor (`http`, `command` or `noop`), a compensation (another action
of the catalog, with parameters made from the first step's parameters and output, or
`irreversible`) and a scope: the services it may touch, named by one of its parameters
(`target`) and allowed by a regular expression, or only the incident's own service.

Templates (`{service}`, `{params.version}`, `{output.previous}`) name values only: no
attribute access, no format specs, nothing evaluated. A catalog that is wrong is refused as a
whole when it is loaded, with one line naming the action and the key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from eventlog.payloads.investigation import Category
from responder.tools.config_file import load_config_file

Risk = Literal["low", "medium", "high"]
RISKS: tuple[Risk, ...] = ("low", "medium", "high")
TEMPLATE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\}")
ACTION_NAME = r"^[a-z][a-z0-9_]{0,63}$"


class TemplateError(ValueError):
    """A template names a value that is not there."""


def render(template: str, values: dict[str, Any], *, quote: Any = None) -> Any:
    """`template` with each `{name}` or `{section.name}` replaced by its value in `values`.
    A template that is one placeholder alone gives the value itself (a number stays a number);
    otherwise values are put in as text, each through `quote` when given (a URL's)."""
    whole = TEMPLATE.fullmatch(template)
    if whole:
        return _lookup(values, whole.group(1))

    def one(match: re.Match[str]) -> str:
        text = str(_lookup(values, match.group(1)))
        return quote(text) if quote else text

    return TEMPLATE.sub(one, template)


def render_all(templates: Any, values: dict[str, Any]) -> Any:
    """Every string inside a JSON-like structure rendered."""
    if isinstance(templates, str):
        return render(templates, values)
    if isinstance(templates, dict):
        return {k: render_all(v, values) for k, v in templates.items()}
    if isinstance(templates, list):
        return [render_all(v, values) for v in templates]
    return templates


def _lookup(values: dict[str, Any], path: str) -> Any:
    found: Any = values
    for part in path.split("."):
        if not isinstance(found, dict) or part not in found:
            raise TemplateError(f"{{{path}}} names nothing")
        found = found[part]
    return found


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)  # a misspelt key is not ignored


class HttpExecutor(_Strict):
    """A JSON request. The step's idempotency key goes in `Idempotency-Key`; `outcome_url`
    (a GET, templated with `{key}` too) says what became of a key, after a crash."""

    kind: Literal["http"]
    method: Literal["POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: str = Field(pattern=r"^https?://")
    body: dict[str, Any] | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    success_status: list[int] = Field(default_factory=lambda: [200, 201, 202, 204])
    outcome_url: str | None = Field(default=None, pattern=r"^https?://")
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)


class CommandExecutor(_Strict):
    """A program run with arguments, never through a shell. `rerun_safe`: running it twice is
    the same as once, so after a crash it may run again."""

    kind: Literal["command"]
    program: str = Field(pattern=r"^/", description="an absolute path: nothing looked up")
    args: list[str] = Field(default_factory=list)
    timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    rerun_safe: bool


class NoopExecutor(_Strict):
    """Records what it would do: a dry run, or a demo."""

    kind: Literal["noop"]


Executor = Annotated[HttpExecutor | CommandExecutor | NoopExecutor, Field(discriminator="kind")]


class Compensation(_Strict):
    """The action that undoes a step, its parameters made from the step's own (`{params.x}`)
    and what the step answered (`{output.y}`)."""

    action: str = Field(pattern=ACTION_NAME)
    params: dict[str, Any] = Field(default_factory=dict)


class Scope(_Strict):
    """Which services an action may touch: the value of its `target` parameter must match
    `services` (a regular expression, whole), or be the incident's own service."""

    target: str = "service"
    services: str | None = None
    incident_service_only: bool = False

    @field_validator("services")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            re.compile(value)
        return value

    @model_validator(mode="after")
    def _one_rule(self) -> Scope:
        if (self.services is None) == (not self.incident_service_only):
            raise ValueError("give services (a pattern) or incident_service_only: true")
        return self

    def allows(self, service: str, incident_service: str | None) -> bool:
        if self.incident_service_only:
            return incident_service is not None and service == incident_service
        assert self.services is not None
        return re.fullmatch(self.services, service) is not None


NUMBER = r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"
CONDITION = re.compile(rf"^(?:empty|result\s*(<=|>=|==|!=|<|>)\s*({NUMBER}))$")
COMPARE = {
    "<": float.__lt__, "<=": float.__le__, ">": float.__gt__,
    ">=": float.__ge__, "==": float.__eq__, "!=": float.__ne__,
}  # fmt: skip


class Verification(_Strict):
    """How recovery is measured after the steps, the way Argo Rollouts' analysis does: after
    `settle_seconds`, `query` is run `count` times every `interval_seconds`, each result judged
    by `success_condition`; more than `failure_limit` failed measurements fail it.

    `query` (PromQL, templated with the step's params) defaults to the incident's own signal
    (its alert's `expr`, or its detector rule's query and line), measured on its own series.
    `success_condition` is `empty` (no series), or `result <op> number` (`<`, `<=`, `>`, `>=`,
    `==`, `!=`), which every series returned must meet; no series at all fails it."""

    query: str | None = None
    success_condition: str = "empty"
    count: int = Field(default=3, ge=1, le=100)
    interval_seconds: float = Field(default=10.0, gt=0, le=3600)
    failure_limit: int = Field(default=0, ge=0)
    settle_seconds: float = Field(default=30.0, ge=0, le=3600)

    @field_validator("success_condition")
    @classmethod
    def _a_condition(cls, value: str) -> str:
        if not CONDITION.fullmatch(value.strip()):
            raise ValueError(f"{value!r}: write `empty` or `result <op> number`")
        return value.strip()

    @model_validator(mode="after")
    def _consistent(self) -> Verification:
        if self.failure_limit >= self.count:
            raise ValueError("failure_limit must be below count, or nothing could fail it")
        if self.query is None and self.success_condition != "empty":
            raise ValueError("a success_condition other than empty needs its query")
        return self

    def judge(self, values: list[float]) -> bool:
        """Whether one measurement (the values of the series the query returned) succeeds."""
        match = CONDITION.fullmatch(self.success_condition)
        assert match is not None
        if match.group(1) is None:
            return not values
        op, bound = COMPARE[match.group(1)], float(match.group(2))
        return bool(values) and all(op(v, bound) for v in values)


class Action(_Strict):
    name: str = Field(pattern=ACTION_NAME)
    description: str = Field(min_length=1)
    params: dict[str, Any] = Field(description="a JSON Schema of type object")
    risk: Risk
    executor: Executor
    compensation: Compensation | Literal["irreversible"]
    scope: Scope
    verify: Verification | None = None
    remedies: list[Category] = Field(
        default_factory=list,
        description="root-cause categories it is recommended for, on the hypothesis's service",
    )

    @field_validator("params")
    @classmethod
    def _a_schema_of_an_object(cls, schema: dict[str, Any]) -> dict[str, Any]:
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise ValueError(f"not a JSON Schema: {exc.message}") from None
        if schema.get("type") != "object":
            raise ValueError('the schema must be of type "object"')
        return schema

    @model_validator(mode="after")
    def _target_is_a_parameter(self) -> Action:
        if self.scope.target not in self.params.get("properties", {}):
            raise ValueError(f"scope.target {self.scope.target!r} is not one of its params")
        if self.scope.target not in self.params.get("required", []):
            raise ValueError(f"scope.target {self.scope.target!r} must be a required param")
        return self

    def check_params(self, params: dict[str, Any]) -> str | None:
        """Why `params` do not fit the schema (the first reason), or None."""
        errors = sorted(
            Draft202012Validator(self.params).iter_errors(params), key=lambda e: list(e.path)
        )
        if not errors:
            return None
        where = ".".join(str(p) for p in errors[0].absolute_path)
        return f"{where + ': ' if where else ''}{errors[0].message}"


class Catalog(_Strict):
    actions: list[Action]

    @model_validator(mode="after")
    def _consistent(self) -> Catalog:
        names = [a.name for a in self.actions]
        twice = {n for n in names if names.count(n) > 1}
        if twice:
            raise ValueError(f"action {sorted(twice)[0]!r} is listed twice")
        for action in self.actions:
            undo = action.compensation
            if isinstance(undo, Compensation) and undo.action not in names:
                raise ValueError(
                    f"{action.name}: its compensation {undo.action!r} is not in the catalog"
                )
            wrong = _template_errors(action, self)
            if wrong:
                raise ValueError(f"{action.name}: {wrong}")
        return self

    def get(self, name: str) -> Action | None:
        return next((a for a in self.actions if a.name == name), None)


def _placeholders(templates: Any) -> list[str]:
    """Every `{name}` inside a JSON-like structure of templates."""
    if isinstance(templates, str):
        return TEMPLATE.findall(templates)
    if isinstance(templates, dict):
        return [n for v in templates.values() for n in _placeholders(v)]
    if isinstance(templates, list):
        return [n for v in templates for n in _placeholders(v)]
    return []


def _template_errors(action: Action, catalog: Catalog) -> str | None:
    """What a template of `action` names that will not be there when it runs (a misspelt
    param), or a compensation that leaves out what its action requires; None if all is well.
    Said when the catalog loads, not when a step or an undo needs it."""
    params = sorted(action.params.get("properties", {}))
    executor = action.executor
    places: list[tuple[str, Any, set[str]]] = []
    if isinstance(executor, HttpExecutor):
        places.append(("executor", [executor.url, executor.body, executor.headers],
                       {*params, "key"}))  # fmt: skip
        if executor.outcome_url:
            places.append(("executor.outcome_url", executor.outcome_url, {*params, "key"}))
    elif isinstance(executor, CommandExecutor):
        places.append(("executor.args", executor.args, {*params, "key"}))
    if action.verify is not None and action.verify.query:
        places.append(("verify.query", action.verify.query, set(params)))
    for where, templates, known in places:
        for name in _placeholders(templates):
            if name not in known:
                return f"{where}: {{{name}}} names no param (its params: {', '.join(params)})"
    undo = action.compensation
    if isinstance(undo, Compensation):
        for name in _placeholders(undo.params):
            section, _, rest = name.partition(".")
            if section == "output" and rest:
                continue  # what the step answers is known only then
            if section != "params" or rest not in params:
                return (f"compensation: {{{name}}} names neither {{params.<one of "
                        f"{', '.join(params)}>}} nor {{output.<field>}}")  # fmt: skip
        target = catalog.get(undo.action)
        needed = target.params.get("required", []) if target is not None else []
        missing = sorted(set(needed) - set(undo.params))
        if missing:
            return f"compensation: {undo.action} requires {', '.join(missing)}, not given"
    return None


def load_catalog(path: Path) -> Catalog:
    """The catalog VIGIL_ACTIONS names; ConfigFileError naming the key that is wrong."""
    return load_config_file(path, Catalog, "VIGIL_ACTIONS")


__all__ = [
    "RISKS", "Action", "Catalog", "Risk", "TemplateError", "Verification", "load_catalog", "render",
]  # fmt: skip
