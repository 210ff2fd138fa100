"""Layering contracts, enforced (the role kopf's .importlinter plays, with ast and no extra tool).

- greenml.planning is pure: no kopf, kubernetes, network or signal-provider imports.
- Only greenml.kube imports the Kubernetes client.
- Only greenml.controllers (and `greenml run`, which starts them) import kopf.
- The operator's runtime never imports pandas or matplotlib (lean image).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "operator" / "greenml"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def modules(sub: str = "") -> list[Path]:
    return sorted((PKG / sub).rglob("*.py"))


def offenders(paths: list[Path], banned: tuple[str, ...]) -> list[str]:
    bad = []
    for p in paths:
        for mod in imports_of(p):
            if any(mod == b or mod.startswith(b + ".") for b in banned):
                bad.append(f"{p.relative_to(PKG.parent)} imports {mod}")
    return bad


def test_planning_is_pure():
    banned = ("kopf", "kubernetes", "requests", "aiohttp", "urllib3", "socket", "http", "prometheus_api_client",
              "greenml.kube", "greenml.controllers", "greenml.signals.providers", "greenml.signals.http")
    assert offenders(modules("planning"), banned) == []


def test_only_kube_imports_the_kubernetes_client():
    others = [p for p in modules() if "kube" not in p.relative_to(PKG).parts[:1]]
    assert offenders(others, ("kubernetes",)) == []


def test_only_controllers_import_kopf():
    allowed = {PKG / "commands" / "run.py"}
    others = [p for p in modules() if p.relative_to(PKG).parts[0] != "controllers" and p not in allowed]
    assert offenders(others, ("kopf",)) == []


# scipy (HiGHS) is the optional extra ``exact``: only the planner's exact MILP may use it, and
# only inside a function that runs without it (ImportError -> "unavailable", heuristics only)
OPTIONAL = {"scipy": {PKG / "planning" / "capacity.py"}}


@pytest.mark.parametrize("heavy", ["pandas", "matplotlib", "scipy", "torch"])
def test_no_heavy_dependencies_in_the_package(heavy):
    assert offenders([p for p in modules() if p not in OPTIONAL.get(heavy, ())], (heavy,)) == []


def test_optional_scipy_is_never_imported_at_module_level():
    for path in OPTIONAL["scipy"]:
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert not [n for n in top if "scipy" in ast.dump(n)], path


def test_the_checker_sees_real_imports():
    # guards the contracts above against passing vacuously
    assert offenders(modules("controllers"), ("kopf",))
    assert offenders(modules("kube"), ("kubernetes",))


def test_every_watch_handler_is_a_coroutine_on_the_event_loop():
    """A sync kopf handler runs in a worker thread: a thread hop per watch event (8 % of the
    operator's CPU in a 5,000-object start-up) and the store and the loop's wake-ups touched
    from threads (asyncio.Event is not thread-safe). The watch handlers only store and wake."""
    import inspect

    import kopf

    import greenml.controllers  # noqa: F401  (registers every handler)
    from greenml.controllers import kueue

    registry = kopf.OperatorRegistry()
    kueue.register_watches(registry)
    handlers = list(kopf.get_default_registry()._watching.get_all_handlers()) + list(
        registry._watching.get_all_handlers())
    assert len(handlers) >= 8
    sync = [h.id for h in handlers if not inspect.iscoroutinefunction(h.fn)]
    assert sync == []


def test_kopf_has_only_event_handlers_so_no_diff_base_is_needed():
    """controllers.operator.NoDiffBase stores and builds no diff-base: right only while no
    handler needs one (create/update/delete/resume or a daemon/timer would see no change)."""
    import kopf

    import greenml.controllers  # noqa: F401  (registers every handler)
    from greenml.controllers.operator import NoDiffBase, configure_kopf
    from greenml.settings import Settings

    registry = kopf.get_default_registry()
    assert list(registry._watching.get_all_handlers())          # the event handlers are seen
    assert list(registry._changing.get_all_handlers()) == []
    assert list(registry._spawning.get_all_handlers()) == []
    ks = kopf.OperatorSettings()
    configure_kopf(ks, Settings())
    assert isinstance(ks.persistence.diffbase_storage, NoDiffBase)
