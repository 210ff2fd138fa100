"""greenml-operator: keep ML workloads inside carbon and energy budgets."""

GROUP = "greenml.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

__version__ = "0.1.0"
