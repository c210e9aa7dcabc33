"""The static HTML feature browser (``site.py``) and the interactive app (``app.py``)."""

from diffdict.report.site import build_report, write_site

__all__ = ["build_report", "write_site"]
