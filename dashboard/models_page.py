"""The live models page for staff: every model with its state, memory, slots, queue, idle
countdown, pin and usage today, kept current over a WebSocket (dashboard.model_feed); Load,
Unload and Pin buttons call the services the admin's actions call."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import sync_to_async
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_POST

from inference.errors import ApiError
from inference.protocol import api_error
from inference.runtime.errors import RuntimeFailure
from inference.runtime.lifecycle import LoadReason
from inference.selectors.model_table import model_table
from inference.services import models as model_services


@staff_member_required
def index(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard/models.html", {"table": model_table().as_dict()})


async def _load(model: str) -> str:
    await model_services.model_load(model=model, reason=LoadReason.ADMIN_UI)
    return f"{model} is loaded."


async def _unload(model: str) -> str:
    result = await model_services.model_unload(model=model, reason=LoadReason.ADMIN_UI)
    if result["pending"]:
        return f"{model} unloads when its running requests end."
    return f"{model} is unloaded." if result["unloaded"] else f"{model} was not loaded."


def _pinning(pinned: bool) -> Callable[[str], Awaitable[str]]:
    async def pin(model: str) -> str:
        name = await sync_to_async(model_services.model_pin)(model=model, pinned=pinned)
        return f"{name} is {'pinned' if pinned else 'no longer pinned'}."

    return pin


ACTIONS: dict[str, Callable[[str], Awaitable[str]]] = {
    "load": _load,
    "unload": _unload,
    "pin": _pinning(True),
    "unpin": _pinning(False),
}


@require_POST
@staff_member_required
async def action(request: HttpRequest, action: str) -> JsonResponse:
    """POST (CSRF-protected) with the form field `model`: {"message"}, or {"error"} with the
    error's status. A load answers once the model is loaded; the page shows its progress live."""
    model = request.POST.get("model", "")
    if action not in ACTIONS or not model:
        return JsonResponse({"error": f"Unknown action {action!r} or no model given."}, status=400)
    try:
        message = await ACTIONS[action](model)
    except (ApiError, RuntimeFailure) as exc:
        error = api_error(exc)
        assert error is not None
        return JsonResponse({"error": error.message}, status=error.status)
    return JsonResponse({"message": message})
