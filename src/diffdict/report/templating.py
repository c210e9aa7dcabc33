"""The HTML pages' jinja2 templates (``templates/``: the report site, the study index).

Autoescape is on: every value a template prints is HTML-escaped, quotes included, unless
the template marks it safe; ``None`` prints as nothing."""

from __future__ import annotations

import functools
from importlib.resources import files

import jinja2


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("diffdict.report", "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        finalize=lambda value: "" if value is None else value,
    )


def render(template_name: str, **context) -> str:
    return _environment().get_template(template_name).render(**context)


def asset(name: str) -> str:
    """A file of ``templates/`` copied as it is (the site's style sheet and script)."""
    return files("diffdict.report").joinpath("templates", name).read_text(encoding="utf-8")
