"""Offline policy checks for greenml manifests (`greenml lint`), for CI pipelines and GitOps.

Each TrainingJob and InferenceBudget document found in the given YAML files goes
through three layers, in order:

1. the CRD's ``openAPIV3Schema`` (what the API server checks at apply time), with
   ``jsonschema`` — OpenAPI v3.0's boolean ``exclusiveMinimum``/``exclusiveMaximum``
   are rewritten to the JSON-Schema numeric form first; CEL rules are not evaluated
   here (layer 2 mirrors them);
2. the pydantic models in ``greenml.api`` (the operator's own parse: unknown fields,
   CEL-equivalent cross-field rules, durations);
3. :func:`semantic_errors` — rules the operator enforces that no schema can express.

Only the first message per field path is kept, so one mistake is reported once.
Other kinds (and other API groups) are ignored. This module is pure: it reads files
it is given and takes ``now`` as an argument.
"""
from __future__ import annotations

import copy
import fnmatch
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import yaml
from pydantic import BaseModel, ValidationError

from greenml import GROUP, VERSION
from greenml.api import InferenceBudget, TrainingJob
from greenml.timeutil import format_time, parse_duration

KINDS: dict[str, type[BaseModel]] = {"TrainingJob": TrainingJob, "InferenceBudget": InferenceBudget}
YAML_SUFFIXES = (".yaml", ".yml")
Format = Literal["text", "github", "json"]


@dataclass(frozen=True)
class Finding:
    """One problem: where (file, line, object, field path) and what."""

    file: str
    line: int
    obj: str  # "Kind namespace/name" (or "" for file-level problems)
    field: str  # dotted path, e.g. "spec.schedule.deadline"; "" for the whole object
    message: str

    def text(self) -> str:
        where = ": ".join(p for p in (self.obj, self.field) if p)
        return f"{self.file}:{self.line}: error: {where + ': ' if where else ''}{self.message}"

    def github(self) -> str:
        def esc(s: str, prop: bool = False) -> str:
            s = s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
            return s.replace(":", "%3A").replace(",", "%2C") if prop else s

        where = ": ".join(p for p in (self.obj, self.field) if p)
        msg = f"{where}: {self.message}" if where else self.message
        return f"::error file={esc(self.file, True)},line={self.line},title=greenml lint::{esc(msg)}"


# ---------------------------------------------------------------- semantic rules
#
# Kept minimal and documented so the operator's admission/validation can share them.
# Each rule returns (field path, message); inputs are wire-format dicts (camelCase),
# and a rule stays silent when the fields it needs are missing or malformed (the
# schema and model layers report those).

def semantic_errors(obj: dict[str, Any], now: datetime) -> list[tuple[str, str]]:
    """Rules beyond the schema for a TrainingJob or InferenceBudget manifest.

    TrainingJob:
      - ``spec.template.spec.template.spec.containers`` is a non-empty list;
      - the pod ``restartPolicy`` is Never or OnFailure (a Job rejects Always, and the
        operator only creates the Job later, so the error would surface late);
      - an absolute ``schedule.deadline`` lies after ``now + estimatedDuration``
        (otherwise it is already missed or cannot be met even when started now);
      - ``schedule.minRunDuration`` is not longer than ``estimatedDuration``.
    InferenceBudget:
      - ``budget.carbonGrams`` / ``budget.energyKWh``, when set, are positive;
      - at least one variant reaches ``policy.qualityFloor`` (else no variant is
        ever allowed and the operator can only fail);
      - a variant ``patch`` is a mapping that does not touch ``spec.selector``
        (immutable on Deployments: the server-side apply would be rejected).
    """
    kind = obj.get("kind")
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return []
    if kind == "TrainingJob":
        return _training_job_rules(obj, now)
    if kind == "InferenceBudget":
        return _inference_budget_rules(spec)
    return []


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _duration(v: Any) -> timedelta | None:
    try:
        return parse_duration(v) if v is not None else None
    except ValueError:
        return None


def _training_job_rules(obj: dict[str, Any], now: datetime) -> list[tuple[str, str]]:
    """The operator's own admission checks (greenml.services.trainingjob): one code path
    decides what the operator would reject and what lint reports."""
    from greenml.services.trainingjob import Defaults, InvalidSpec, check_feasible, resolve

    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    body = {**obj, "metadata": {**meta, "creationTimestamp": meta.get("creationTimestamp") or format_time(now)}}
    defaults = Defaults()
    try:
        check_feasible(resolve(body, defaults), now, defaults)
    except InvalidSpec as err:
        return [(err.field, err.message)]
    return []


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _inference_budget_rules(spec: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key in ("carbonGrams", "energyKWh"):
        value = _number(_get(spec, "budget", key))
        if value is not None and value <= 0:
            out.append((f"spec.budget.{key}", f"budget must be positive, got {value:g}"))
    variants = spec.get("variants")
    if not isinstance(variants, list):
        return out
    floor = _number(_get(spec, "policy", "qualityFloor")) or 0.0
    qualities = [q for q in (_number(_get(v, "quality")) for v in variants) if q is not None]
    if qualities and max(qualities) < floor:
        out.append(("spec.policy.qualityFloor",
                    f"no variant reaches qualityFloor {floor:g} (best quality {max(qualities):g})"))
    for i, v in enumerate(variants):
        patch = _get(v, "patch")
        if patch is not None and not isinstance(patch, dict):
            out.append((f"spec.variants[{i}].patch", "patch must be a mapping of Deployment fields"))
        elif _get(patch, "spec", "selector") is not None:
            out.append((f"spec.variants[{i}].patch.spec.selector",
                        "a variant must not change the Deployment's selector (immutable)"))
    return out


# ---------------------------------------------------------------- schema layer

def _openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI v3.0 → JSON Schema: boolean exclusive bounds become numeric ones."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_to_jsonschema(v) for k, v in node.items()}
    for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if out.get(flag) is True and bound in out:
            out[flag] = out.pop(bound)
        elif out.get(flag) is False:
            out.pop(flag)
    return out


def load_schemas(crd_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """Kind → JSON Schema of its served greenml.io version.

    From the CRD files in ``crd_dir`` (e.g. the repository's ``crds/`` or the CRDs
    a cluster runs), else generated from the API models (identical to ``crds/``).
    """
    if crd_dir is None:
        from greenml.api.crdgen import all_crds

        crds = list(all_crds().values())
    else:
        files = sorted(p for p in Path(crd_dir).glob("*") if p.suffix in YAML_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{crd_dir}: no CRD YAML files")
        crds = [d for p in files for d in yaml.safe_load_all(p.read_text()) if isinstance(d, dict)]
    schemas: dict[str, dict[str, Any]] = {}
    for crd in crds:
        spec = crd.get("spec", {})
        if crd.get("kind") != "CustomResourceDefinition" or spec.get("group") != GROUP:
            continue
        for version in spec.get("versions", []):
            if version.get("name") == VERSION:
                raw = version["schema"]["openAPIV3Schema"]
                schemas[spec["names"]["kind"]] = _openapi_to_jsonschema(copy.deepcopy(raw))
    missing = set(KINDS) - set(schemas)
    if missing:
        raise ValueError(f"{crd_dir}: no {GROUP}/{VERSION} CRD for {', '.join(sorted(missing))}")
    return schemas


def _dotted(path: Iterable[Any]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _schema_errors(obj: dict[str, Any], schema: dict[str, Any]) -> list[tuple[str, str]]:
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    return [(_dotted(e.absolute_path), f"schema: {e.message}") for e in errors]


def _model_errors(obj: dict[str, Any], model: type[BaseModel]) -> list[tuple[str, str]]:
    try:
        model.model_validate(obj)
    except ValidationError as exc:
        return [(_dotted(e["loc"]), e["msg"].removeprefix("Value error, ")) for e in exc.errors()]
    return []


# ---------------------------------------------------------------- documents

class ManifestLoader(yaml.SafeLoader):
    """YAML as kubectl hands it to the API server.

    kubectl converts YAML to JSON (sigs.k8s.io/yaml over go-yaml v2), which keeps an
    unquoted timestamp such as ``deadline: 2027-01-01T00:00:00Z`` as its text — JSON has
    no time type. PyYAML would build a ``datetime`` and the schema would then reject it as
    "not of type 'string'". Here timestamps stay the strings the server receives; every
    other scalar resolves as before. lint, estimate and simulate read manifests with it.
    """


ManifestLoader.add_constructor("tag:yaml.org,2002:timestamp", lambda loader, node: loader.construct_scalar(node))


def load_manifests(text: str) -> list[Any]:
    """All documents of a YAML stream, as the API server would receive them (see ManifestLoader)."""
    return list(yaml.load_all(text, Loader=ManifestLoader))


@dataclass(frozen=True)
class _Doc:
    file: str
    node: yaml.Node
    obj: Any


def _line_of(node: yaml.Node, field: str) -> int:
    """1-based line of a dotted field path inside a document (nearest existing parent)."""
    parts: list[str | int] = []
    for chunk in field.replace("]", "").split("."):
        name, *idx = chunk.split("[")
        if name:
            parts.append(name)
        parts.extend(int(i) for i in idx if i.isdigit())
    for part in parts:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            match = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            if match is None:
                break
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
    return node.start_mark.line + 1


def _documents(path: Path, display: str) -> tuple[list[_Doc], list[Finding]]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return [], [Finding(display, 1, "", "", f"cannot read: {exc}")]
    docs: list[_Doc] = []
    loader = ManifestLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            docs.append(_Doc(display, node, loader.construct_document(node)))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        return docs, [Finding(display, (mark.line + 1) if mark else 1, "", "", f"invalid YAML: {exc}")]
    finally:
        loader.dispose()
    return docs, []


def _object_label(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    name = meta.get("name", "<unnamed>")
    ns = meta.get("namespace")
    return f"{obj.get('kind')} {ns + '/' if ns else ''}{name}"


def documents(path: Path, display: str | None = None) -> tuple[list[_Doc], list[Finding]]:
    """Public wrapper of the multi-document YAML reader (for ``greenml estimate``)."""
    return _documents(path, display if display is not None else str(path))


def finding(doc: _Doc, field: str, message: str) -> Finding:
    """A Finding on ``field`` of a document's object, located the way lint locates its own."""
    obj = doc.obj if isinstance(doc.obj, dict) else {}
    return Finding(doc.file, _line_of(doc.node, field), _object_label(obj), field, message)


def is_greenml(obj: Any) -> bool:
    """A TrainingJob/InferenceBudget of the greenml.io group (other kinds/groups are ignored)."""
    return (isinstance(obj, dict) and obj.get("kind") in KINDS
            and str(obj.get("apiVersion", "")).split("/")[0] == GROUP)


def lint_document(doc: _Doc, schemas: dict[str, dict[str, Any]], now: datetime) -> list[Finding]:
    obj = doc.obj
    if not isinstance(obj, dict) or obj.get("kind") not in KINDS:
        return []
    api_version = str(obj.get("apiVersion", ""))
    if api_version.split("/")[0] != GROUP:
        return []  # a same-named kind from another API group
    label = _object_label(obj)
    raw: list[tuple[str, str]] = []
    if api_version != f"{GROUP}/{VERSION}":
        raw.append(("apiVersion", f"unknown version {api_version!r}; this greenml serves {GROUP}/{VERSION}"))
    else:
        if not _get(obj, "metadata", "name") and not _get(obj, "metadata", "generateName"):
            raw.append(("metadata.name", "metadata.name is required"))
        raw += _schema_errors(obj, schemas[obj["kind"]])
        raw += _model_errors(obj, KINDS[obj["kind"]])
        raw += semantic_errors(obj, now)
    seen: set[str] = set()
    findings = []
    for field, message in raw:
        if field in seen:
            continue
        seen.add(field)
        findings.append(Finding(doc.file, _line_of(doc.node, field), label, field, message))
    return sorted(findings, key=lambda f: f.line)


def excluded(path: Path, patterns: Sequence[str]) -> bool:
    """``path`` matches one of the glob ``patterns`` (``fnmatch``: ``*`` also crosses ``/``),
    tried against the whole path as given and against every trailing part of it, so
    ``templates``, ``*/templates/*`` and ``chart/templates/*.yaml`` all exclude a chart's
    templates."""
    text = path.as_posix()
    parts = path.parts
    candidates = {text, *("/".join(parts[i:]) for i in range(len(parts)))}
    for pattern in patterns:
        pat = pattern.rstrip("/")
        if any(fnmatch.fnmatchcase(c, pat) or fnmatch.fnmatchcase(c, pat + "/*") for c in candidates):
            return True
    return False


def yaml_files(paths: Iterable[str | Path], exclude: Sequence[str] = ()) -> tuple[list[Path], list[Finding]]:
    """Expand files and directories (recursively, *.yaml/*.yml, sorted), leaving out
    the files and folders that match an ``exclude`` glob (see :func:`excluded`)."""
    files: list[Path] = []
    missing: list[Finding] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix in YAML_SUFFIXES and f.is_file()
                            and not excluded(f, exclude))
        elif p.is_file():
            if not excluded(p, exclude):
                files.append(p)
        else:
            missing.append(Finding(str(p), 1, "", "", "no such file or directory"))
    return files, missing


@dataclass(frozen=True)
class Report:
    files: int
    objects: int
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not self.findings

    def render(self, fmt: Format) -> str:
        if fmt == "json":
            import json

            return json.dumps({"files": self.files, "objects": self.objects, "ok": self.ok,
                               "errors": [asdict(f) for f in self.findings]}, indent=2)
        lines = [f.github() if fmt == "github" else f.text() for f in self.findings]
        summary = f"{self.files} file(s), {self.objects} greenml object(s), {len(self.findings)} error(s)"
        return "\n".join([*lines, summary])


def lint_paths(paths: Iterable[str | Path], now: datetime,
               schemas: dict[str, dict[str, Any]] | None = None, exclude: Sequence[str] = ()) -> Report:
    """Lint every greenml object in the given files/directories (minus ``exclude`` globs)."""
    schemas = schemas if schemas is not None else load_schemas()
    files, findings = yaml_files(paths, exclude)
    objects = 0
    for f in files:
        docs, problems = _documents(f, str(f))
        findings += problems
        for doc in docs:
            if isinstance(doc.obj, dict) and doc.obj.get("kind") in KINDS:
                objects += 1
            findings += lint_document(doc, schemas, now)
    return Report(files=len(files), objects=objects, findings=tuple(findings))
