"""`greenml report`: per-namespace showback (energy, carbon operational + embodied, water,
savings against a stated counterfactual) from CR statuses or a simulator result."""
from greenml.report.model import NamespaceTotal, Report, ReportError, Row
from greenml.report.render import html_page, markdown
from greenml.report.sources import read_jobs_power, rows_from_cluster, rows_from_sim

__all__ = ["NamespaceTotal", "Report", "ReportError", "Row", "html_page", "markdown", "read_jobs_power",
           "rows_from_cluster", "rows_from_sim"]
