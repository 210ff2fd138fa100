"""The only package that talks to the Kubernetes API (see .importlinter)."""
from greenml.kube.client import ApiError, Conflict, Kube, NotFound, Transient

__all__ = ["ApiError", "Conflict", "Kube", "NotFound", "Transient"]
