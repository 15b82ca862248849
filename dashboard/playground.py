"""The playground: chat with any model from the browser, through the server's own API."""

from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from inference.config import get_config
from inference.protocol.images import MAX_IMAGES
from inference.selectors import models as model_selectors


@staff_member_required
def playground(request: HttpRequest) -> HttpResponse:
    models = model_selectors.models_with_state()
    default = model_selectors.default_model_name()
    server = get_config().server
    # The limits the server holds images to, so that the page refuses an image before sending it.
    limits = {
        "max_image_bytes": server.max_image_bytes,
        "max_body_bytes": server.max_body_bytes,
        "max_images": MAX_IMAGES,
    }
    return render(request, "dashboard/playground.html", {"models": models, "default_model": default, "limits": limits})
