"""Zones across providers (issue 15, item 2): an explicit map to the embedded profile's
zones, with the reason carried, and the signal's kind carried through the chain so a
fallback of another kind is a condition and a label (``describe``)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from greenml.signals import EmbeddedSource, FallbackChain, SignalError
from greenml.signals.chain import describe
from greenml.signals.embedded import PROFILES
from greenml.signals.zones import ZONE_MAP, profile_zone

NOW = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)


class Down:
    def __init__(self, name: str, kind: str) -> None:
        self.name, self.kind = name, kind

    def current(self, zone, now):
        raise SignalError(f"{self.name}: HTTP 503", reason="ServerError")

    history = forecast = lambda self, *a: self.current(None, None)


@pytest.mark.parametrize("zone, profile", [
    ("PJM_NJ", "US-MIDA-PJM"), ("PJM_SOUTHWEST_OH", "US-MIDA-PJM"), ("CAISO_ESCONDIDO", "US-CAL-CISO"),
    ("GB-1", "GB"), ("GB-17", "GB"), ("DE-LU", "DE"), ("UK", "GB")])
def test_mapped_zones_say_why(zone, profile):
    s = EmbeddedSource().current(zone, NOW)
    assert s.meta["zone"] == profile and s.meta["zone_map"] == ZONE_MAP[zone][1]


def test_a_profile_zone_is_itself():
    s = EmbeddedSource().current("DE", NOW)
    assert s.meta["zone"] == "DE" and "zone_map" not in s.meta


@pytest.mark.parametrize("zone", ["CAISO_MADEUP", "PJM_", "GB-19", "GB-0", "GB-NIR", "GB-ORK", "ERCOT_COAST"])
def test_names_not_in_the_map_are_not_guessed(zone):
    """A prefix is no mapping: GB-NIR (Northern Ireland) is another grid, CAISO_MADEUP unknown."""
    assert profile_zone(zone, frozenset(PROFILES)) is None
    with pytest.raises(SignalError) as exc:
        EmbeddedSource().current(zone, NOW)
    assert exc.value.reason == "UnknownZone" and "greenml.signals.zones" in str(exc.value)


def test_every_mapping_names_a_profile_and_a_reason():
    for zone, (profile, why) in ZONE_MAP.items():
        assert profile in PROFILES and why, zone
    assert {f"GB-{n}" for n in range(1, 19)} <= set(ZONE_MAP)


def test_marginal_outage_is_a_kind_condition_and_label():
    """WattTime down: the average profile serves CAISO_NORTH, and says so everywhere."""
    f = FallbackChain(Down("watttime", "marginal")).forecast("CAISO_NORTH", NOW, timedelta(hours=6))
    info = describe(f)
    assert info.kind == "average" and info.provider_kind == "marginal" and info.kind_changed
    assert info.labels() == {"source": "embedded", "link": "embedded", "kind": "average", "provider_kind": "marginal"}
    (deg_type, deg, reason, msg), (kind_type, changed, kind_reason, kind_msg) = info.conditions()
    assert (deg_type, deg, reason) == ("SignalsDegraded", True, "ServerError")
    assert "watttime: ServerError" in msg and "CAISO balancing authority" in msg
    assert (kind_type, changed, kind_reason) == ("SignalKindChanged", True, "KindChanged")
    assert "marginal" in kind_msg and "average" in kind_msg


def test_same_kind_fallback_is_degraded_but_not_a_kind_change():
    f = FallbackChain(Down("ukcarbon", "average")).forecast("GB-13", NOW, timedelta(hours=6))
    info = describe(f)
    assert not info.kind_changed and info.labels()["provider_kind"] == "average"
    assert [c[:3] for c in info.conditions()] == [("SignalsDegraded", True, "ServerError"),
                                                  ("SignalKindChanged", False, "SameKind")]


def test_provider_serving_in_full_is_not_degraded():
    info = describe(FallbackChain(EmbeddedSource()).forecast("DE", NOW, timedelta(hours=6)))
    assert info.link == "provider" and info.degraded_reason is None
    assert info.conditions()[0][:3] == ("SignalsDegraded", False, "ProviderServing")
