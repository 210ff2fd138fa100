"""Operator settings: environment (GREENML_*) over an optional YAML file, validated at start."""
from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError as _SourceError

from greenml.timeutil import DURATION_PATTERN, parse_duration


class SettingsError(Exception):
    """Bad operator settings; the message names every bad field."""


ENV_PREFIX = "GREENML_"
#: GREENML_* variables that are not operator settings: the settings file's path, and the
#: variables of the test suites and benchmarks (a shell that runs both must not trip the
#: operator). Anything else starting GREENML_ must name a setting.
NON_SETTING_ENV = frozenset({
    "GREENML_CONFIG",            # path of the YAML settings file
    "GREENML_SHARED_DATA",       # tests: where the shared data sets live
    "GREENML_TEST_LOG_LEVEL",    # tests: log level of the operator under test
    "GREENML_TEST_TOOLS",        # tests: where helm/kubectl/prometheus binaries are
    "GREENML_UPDATE_SNAPSHOTS",  # tests: rewrite golden files
    "GREENML_E2E_KUBECONFIG",    # e2e: use this cluster instead of starting one
    "GREENML_E2E_CACHE",         # e2e: where the built control plane is cached
    "GREENML_BENCH_OUT",         # bench/: where results are written
})
#: prefixes reserved for test and e2e tooling (never settings)
NON_SETTING_PREFIXES = ("GREENML_TEST_", "GREENML_E2E_")
#: Kubernetes' service links: the kubelet gives every pod <SERVICE>_SERVICE_HOST,
#: <SERVICE>_PORT=tcp://… and friends for each Service in its namespace (unless
#: enableServiceLinks is false), so a Service named greenml-… yields GREENML_… variables
_SERVICE_LINK = re.compile(r"_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)$")
_SERVICE_URL = re.compile(r"^(tcp|udp|sctp)://", re.IGNORECASE)


def _service_link(name: str, value: str) -> bool:
    return bool(_SERVICE_LINK.search(name) or (name.endswith("_PORT") and _SERVICE_URL.match(value or "")))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GREENML_", env_nested_delimiter="__", extra="forbid")

    # signals
    provider: Literal["embedded", "file", "electricitymaps", "watttime", "ukcarbon", "prometheus"] = "embedded"
    default_zone: str = "DE"
    intensity_file: str | None = Field(default=None, description="CSV for provider=file")
    provider_url: str | None = None
    provider_token: str | None = Field(default=None, repr=False)
    provider_username: str | None = Field(default=None, repr=False)
    provider_password: str | None = Field(default=None, repr=False)
    prometheus_url: str | None = None
    measure_interval: str = Field(default="5m", pattern=DURATION_PATTERN,
                                  description="how often a running job's energy is read from Prometheus")
    zone_label: str = "topology.kubernetes.io/region"
    zone_map: dict[str, str] = Field(default_factory=dict, description="node region label → grid zone, e.g. "
                                     '{"europe-west3": "DE"}; the zone of most GPUs becomes the default zone')

    # planning
    step: str = Field(default="5m", pattern=DURATION_PATTERN, description="planning slot length")
    horizon: str = Field(default="7d", pattern=DURATION_PATTERN, description="furthest look-ahead")
    safety_margin: str = Field(default="15m", pattern=DURATION_PATTERN)
    replan_interval: str = Field(default="15m", pattern=DURATION_PATTERN)
    tick_interval: float = Field(default=600.0, gt=0, description=(
        "the longest an object waits between reconciles when nothing is due (a safety net: wake-ups come "
        "from its plan, its budget step and watch events), seconds"))
    default_min_run: str = Field(default="30m", pattern=DURATION_PATTERN)
    gpu_capacity: int | None = Field(default=None, ge=0, description="GPUs for shifted jobs; None: sum of nodes' allocatable")
    default_watts_per_gpu: float = Field(default=300.0, gt=0)
    default_gpu_model: str | None = None

    # accounting (SCI): see docs/accounting.md for the cited defaults
    pue: float = Field(default=1.0, ge=1.0, le=5.0, description="facility energy / IT energy")
    wue_l_per_kwh: float | None = Field(default=None, ge=0, description="water per kWh; None: not reported")
    intensity_kind: Literal["average", "marginal"] = "average"
    gpu_embodied_kg: float | None = Field(default=None, ge=0)
    gpu_lifetime_years: float | None = Field(default=None, gt=0)
    server_embodied_kg: float | None = Field(default=None, ge=0)
    server_lifetime_years: float | None = Field(default=None, gt=0)
    gpus_per_server: int | None = Field(default=None, ge=1)

    history_configmap: str = Field(default="greenml-signal-history",
                                   pattern=r"^$|^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
                                   description="ConfigMap in the operator's namespace keeping a bounded record of the "
                                               "provider's intensity history (so the own forecaster has weeks of it "
                                               "on a plan that serves 24 h, across restarts); empty: off")
    history_namespace: str | None = Field(default=None, description="namespace of history_configmap; None: the "
                                          "operator's own (its service account's); outside a cluster the record is off "
                                          "unless this is set")
    history_retention: str = Field(default="35d", pattern=DURATION_PATTERN,
                                   description="how much history the record keeps per provider and zone")
    forecast_ttl: float = Field(default=300.0, ge=0, le=86400,
                                description="seconds a provider forecast is reused per zone (fewer provider calls; "
                                            "an outage is noticed after at most this)")
    forecast_blend: bool = Field(default=True, description=(
        "correct a provider's forecast by the latest recorded actual and mix it 20 % with the own forecaster's "
        "(forecaster.blend_with_provider; on NESO's GB forecasts 0.86-0.98x NESO's error) when history of the same "
        "kind covering a day exists; served as '<provider>+blend'. History is asked at most once per zone per hour; "
        "any failure serves the provider's forecast as issued. false: always as issued"))

    # operator
    namespace: str | None = Field(default=None, description="watch one namespace; None: all")
    health_port: int = Field(default=8080, ge=1, le=65535)
    metrics_port: int = Field(default=9090, ge=0, le=65535)
    peering: str | None = Field(default=None, description="name of the leader-election Lease (HA; in POD_NAMESPACE); None: standalone")
    peering_priority: int | None = Field(default=None, ge=0, le=2**31 - 1,
                                         description="accepted and ignored (kopf peering was replaced by the Lease)")
    peering_lifetime: int = Field(default=60, ge=2, le=3600,
                                  description="the Lease's duration (s): a killed leader is replaced this long after its last renew")
    kueue_enabled: bool = Field(default=False, description=(
        "run Kueue's carbon-window AdmissionCheck controller (controllerName greenml.io/carbon-window; docs/kueue.md)"))
    kueue_interval: float = Field(default=300.0, gt=0, description=(
        "seconds between re-reads of the carbon-window checks' defaults ConfigMaps (Kueue's objects are watched)"))
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    @field_validator("provider_url", "prometheus_url")
    @classmethod
    def _https(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith("https://") or v.startswith("http://")):
            raise ValueError("must be an http(s) URL")
        return v

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return (init_settings, env_settings, _YamlFileSource(settings_cls))

    # derived
    def duration(self, name: str):
        return parse_duration(getattr(self, name))

    def accounting(self):
        """The cluster's AccountingPolicy (unset hardware fields keep the cited defaults)."""
        from greenml.planning.accounting import AccountingPolicy, Hardware

        hw = {k: getattr(self, k) for k in ("gpu_embodied_kg", "gpu_lifetime_years", "server_embodied_kg",
                                            "server_lifetime_years", "gpus_per_server") if getattr(self, k) is not None}
        return AccountingPolicy(pue=self.pue, wue_l_per_kwh=self.wue_l_per_kwh, kind=self.intensity_kind,
                                hardware=Hardware(**hw))


class _YamlFileSource(PydanticBaseSettingsSource):
    """Values from the YAML file named by GREENML_CONFIG (keys as field names)."""

    def get_field_value(self, field, field_name):  # pragma: no cover - unused by __call__
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("GREENML_CONFIG")
        if not path:
            return {}
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise SettingsError(f"GREENML_CONFIG={path}: cannot read: {exc.strerror or exc}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise SettingsError(f"GREENML_CONFIG={path}: not valid YAML: {' '.join(str(exc).split())}") from None
        if not isinstance(data, dict):
            raise SettingsError(f"GREENML_CONFIG={path}: expected a mapping of settings")
        return {str(k).replace("-", "_"): v for k, v in data.items()}


def unknown_env(environ: Mapping[str, str]) -> list[str]:
    """One message per GREENML_* variable that names no setting (with the likely intended one).

    Matched as pydantic-settings matches them: case-insensitive, ``GREENML_<FIELD>`` or a
    nested ``GREENML_<FIELD>__<KEY>``; :data:`NON_SETTING_ENV`,
    :data:`NON_SETTING_PREFIXES` and Kubernetes' service-link variables are not settings
    and are left alone."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    out = []
    for var in sorted(environ):
        up = var.upper()
        if not up.startswith(ENV_PREFIX) or up in NON_SETTING_ENV or up.startswith(NON_SETTING_PREFIXES):
            continue
        if up in known or up.split("__", 1)[0] in known:
            continue
        if _service_link(up, environ[var]):
            continue
        close = difflib.get_close_matches(up, sorted(known | {"GREENML_CONFIG"}), n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close else ""
        out.append(f"  {var}: not a greenml setting{hint}")
    return out


def load_settings(*, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Load and validate; raise SettingsError with one line per bad field or unknown
    GREENML_* variable (``environ``: the environment to check, default ``os.environ``)."""
    unknown = unknown_env(os.environ if environ is None else environ)
    if unknown:
        raise SettingsError("unknown GREENML_* environment variable(s):\n" + "\n".join(unknown))
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = [f"  {_field_name(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise SettingsError("invalid greenml settings:\n" + "\n".join(lines)) from None
    except _SourceError as exc:   # a value the environment source cannot parse (e.g. JSON of a dict)
        raise SettingsError(_source_message(exc)) from None


def _field_name(loc: tuple) -> str:
    name = ".".join(str(p) for p in loc) or "(root)"
    field = str(loc[0]) if loc else ""
    return f"{name} ({ENV_PREFIX}{field.upper()})" if field in Settings.model_fields else name


def _source_message(exc: Exception) -> str:
    """pydantic-settings' 'error parsing value for field "zone_map" from source …' as one line."""
    import re

    m = re.search(r'field "([^"]+)"', str(exc))
    if not m:
        return f"invalid greenml settings: {exc}"
    field = m.group(1)
    what = ("a JSON object, e.g. {\"europe-west3\": \"DE\"}" if field == "zone_map" else "valid JSON")
    cause = exc.__cause__
    detail = f": {cause}" if cause else ""
    return f"invalid greenml settings: {ENV_PREFIX}{field.upper()} must be {what}{detail}"
