"""kopf handlers: thin. Parse → call a service → apply through greenml.kube → status.

Importing this package registers the handlers with kopf's default registry.
"""
from greenml.controllers import inferencebudget, operator, trainingjob  # noqa: F401  (registration)
