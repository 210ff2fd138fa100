"""Carbon-intensity and energy signals behind small interfaces.

`IntensitySeries` is the one time-series type used by sources, the forecaster,
the planners and the simulator. `CarbonSource` is the provider interface.
`build_source(settings)` gives the operator's source: the configured provider wrapped
in the fallback chain (provider → own forecaster → embedded profile).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from greenml.signals.base import CarbonSource, IntensitySeries, SignalError
from greenml.signals.chain import ChainPolicy, FallbackChain
from greenml.signals.embedded import EmbeddedSource
from greenml.signals.file import FileSource

if TYPE_CHECKING:
    from greenml.settings import Settings

__all__ = ["CarbonSource", "IntensitySeries", "SignalError", "EmbeddedSource", "FileSource",
           "FallbackChain", "ChainPolicy", "build_source", "build_provider"]


def _need(value: str | None, field: str, provider: str) -> str:
    if not value:
        raise SignalError(f"settings: provider={provider} needs {field} (env GREENML_{field.upper()})",
                          reason="Misconfigured")
    return value


def build_provider(settings: "Settings") -> CarbonSource | None:
    """The configured provider alone (None for provider=embedded). Raises SignalError
    (reason="Misconfigured") naming the missing setting."""
    p = settings.provider
    if p == "embedded":
        return None
    if p == "file":
        return FileSource(_need(settings.intensity_file, "intensity_file", p))
    from greenml.signals import providers

    if p == "electricitymaps":
        return providers.ElectricityMapsSource(_need(settings.provider_token, "provider_token", p),
                                               base_url=settings.provider_url or providers.ELECTRICITYMAPS_URL)
    if p == "watttime":
        return providers.WattTimeSource(_need(settings.provider_username, "provider_username", p),
                                        _need(settings.provider_password, "provider_password", p),
                                        base_url=settings.provider_url or providers.WATTTIME_URL)
    if p == "ukcarbon":
        return providers.UKCarbonSource(base_url=settings.provider_url or providers.UKCARBON_URL)
    if p == "prometheus":
        from greenml.signals.promql import PromQLSource

        return PromQLSource(_need(settings.prometheus_url or settings.provider_url, "prometheus_url", p))
    raise SignalError(f"settings: unknown provider {p!r}", reason="Misconfigured")


def build_source(settings: "Settings", *, policy: ChainPolicy | None = None, kube: Any = None) -> FallbackChain:
    """The operator's CarbonSource: ``build_provider(settings)`` inside a FallbackChain
    that ends at the embedded profile. An HTTP provider's history is recorded in the
    ConfigMap ``settings.history_configmap`` (greenml.signals.history; ``kube``: the
    Kubernetes client to use, default one made on first use)."""
    policy = policy or ChainPolicy(forecast_ttl=settings.forecast_ttl, blend=settings.forecast_blend)
    provider = build_provider(settings)
    if provider is not None and settings.provider != "file":   # a file is its own record
        from greenml.signals import history

        store = history.history_store(settings.history_namespace or history.own_namespace(),
                                      settings.history_configmap, kube if kube is not None else _kube_factory)
        if store is not None:
            provider = history.RecordedHistory(provider, store,
                                               history.RecordPolicy(retention=settings.duration("history_retention")))
    return FallbackChain(provider, fallback=EmbeddedSource(), policy=policy)


def _kube_factory() -> Any:
    from greenml.kube import Kube

    return Kube()
