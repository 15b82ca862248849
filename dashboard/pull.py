"""The console's model pulls: a form that starts a pull inside the server, its progress live over
the WebSocket (dashboard.consumers.PullProgressConsumer), and a Cancel button."""

from __future__ import annotations

from django import forms
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from inference.config import get_config
from inference.pulling import PullError
from inference.services.pulls import pull_jobs


class PullForm(forms.Form):
    url = forms.CharField(
        label="URL",
        max_length=2000,
        widget=forms.TextInput(attrs={"placeholder": "hf://owner/repo/file.gguf or https://…/model.gguf", "size": 64}),
    )
    name = forms.CharField(required=False, max_length=200, help_text="default: the file name without .gguf")
    sha256 = forms.CharField(required=False, max_length=64, label="sha256", help_text="optional: verified when given")


@staff_member_required
async def page(request: HttpRequest) -> HttpResponse:
    form = PullForm(request.POST if request.method == "POST" else None)
    if form.is_valid():
        user = await request.auser()
        try:
            pull_jobs().start(
                url=form.cleaned_data["url"],
                name=form.cleaned_data["name"] or None,
                sha256=form.cleaned_data["sha256"] or None,
                started_by=user.get_username(),
            )
        except PullError as exc:
            form.add_error(None, str(exc))
        else:
            return redirect("dashboard:pull")  # a reload does not start the pull again
    return render(
        request,
        "dashboard/pull.html",
        {
            "form": form,
            "directory": get_config().model_manager.models_directory,
        },
    )


@require_POST
@staff_member_required
async def cancel(request: HttpRequest, job_id: str) -> JsonResponse:
    return JsonResponse({"cancelled": pull_jobs().cancel(job_id)})
