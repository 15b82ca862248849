"""The console's navigation, the same on every console page and on the admin's home."""

from __future__ import annotations

from typing import Any

from django import template

from dashboard.pages import CONSOLE_PAGES

register = template.Library()


@register.inclusion_tag("dashboard/nav.html", takes_context=True)
def console_nav(context: dict[str, Any]) -> dict[str, Any]:
    match = getattr(context.get("request"), "resolver_match", None)
    current = match.url_name if match and match.app_name == "dashboard" else None
    return {"pages": CONSOLE_PAGES, "current": current}


@register.simple_tag
def console_pages() -> tuple:
    return CONSOLE_PAGES
