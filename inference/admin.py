"""The Django admin: the models (with load/unload actions and saved settings) and read-only
history (load events, request records)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from asgiref.sync import async_to_sync
from django import forms
from django.contrib import admin, messages
from django.db.models import Max, OuterRef, QuerySet, Subquery, Sum
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat
from django.utils import timezone
from django.utils.text import Truncator

from inference.config import get_config
from inference.errors import ApiError
from inference.models import ApiKey, DailyUsage, DiscoveredModel, LoadEvent, RequestRecord, StoredResponse
from inference.protocol import api_error
from inference.runtime.errors import RuntimeFailure
from inference.runtime.lifecycle import LoadReason
from inference.selectors import models as model_selectors
from inference.services import keys as key_services
from inference.services import models as model_services


def _usage_total(field: str) -> Subquery:
    totals = (
        DailyUsage.objects.filter(instance=OuterRef("instance"), model=OuterRef("name"))
        .values("model")
        .annotate(total=Sum(field))
        .values("total")
    )
    return Subquery(totals)


def _served_here(row: DiscoveredModel) -> bool:
    return row.instance == get_config().server.instance


@admin.register(DiscoveredModel)
class DiscoveredModelAdmin(admin.ModelAdmin):
    # What fits at 1,280 px; the instance, parameters and the rest are on the model's page.
    list_display = ("name", "size", "quantization", "inputs", "loaded", "last_used", "requests", "tokens")
    list_filter = ("present", "quantization", "architecture", "instance")
    search_fields = ("name",)
    actions = ("load_now", "unload_now")
    readonly_fields = (
        "instance",
        "name",
        "path",
        "size",
        "file_modified_at",
        "architecture",
        "parameters",
        "quantization",
        "context_length",
        "header_error",
        "projector",
        "present",
        "first_seen_at",
        "last_seen_at",
        "missing_since",
    )
    fieldsets = (
        (None, {"fields": readonly_fields}),
        (
            "Settings (empty: config.json's; applied at the model's next load)",
            {"fields": DiscoveredModel.SETTING_FIELDS},
        ),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[DiscoveredModel]:
        last_used = (
            RequestRecord.objects.filter(instance=OuterRef("instance"), model=OuterRef("name"))
            .values("model")
            .annotate(last=Max("created_at"))
            .values("last")
        )
        return (
            super()
            .get_queryset(request)
            .annotate(
                last_used_at=Subquery(last_used),
                request_total=_usage_total("requests"),
                prompt_total=_usage_total("prompt_tokens"),
                completion_total=_usage_total("completion_tokens"),
            )
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # rows come from the models directory

    def save_model(self, request: HttpRequest, obj: DiscoveredModel, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if "pinned" in form.changed_data and _served_here(obj):
            model_services.model_pin_apply(row=obj)  # a pin needs no reload: in force on a loaded model now

    @admin.display(description="size", ordering="size_bytes")
    def size(self, row: DiscoveredModel) -> str:
        return filesizeformat(row.size_bytes)

    @admin.display(description="parameters", ordering="parameter_count")
    def parameters(self, row: DiscoveredModel) -> str:
        return f"{row.parameter_count / 1e6:,.0f} M" if row.parameter_count else "–"

    @admin.display(description="inputs", ordering="projector")
    def inputs(self, row: DiscoveredModel) -> str:
        return "text+image" if row.projector else "text"

    @admin.display(description="loaded", boolean=True)
    def loaded(self, row: DiscoveredModel) -> bool | None:
        """Known for this server's models only (None: another server's, shown as unknown)."""
        if not _served_here(row):
            return None
        return row.name in model_selectors.loaded_model_names()

    @admin.display(description="last used", ordering="last_used_at")
    def last_used(self, row: Any) -> str:
        return _short_time(row.last_used_at)

    @admin.display(description="requests", ordering="request_total")
    def requests(self, row: Any) -> int:
        return row.request_total or 0

    @admin.display(description="tokens", ordering="completion_total")
    def tokens(self, row: Any) -> int:
        return (row.prompt_total or 0) + (row.completion_total or 0)

    def _rows_served_here(self, request: HttpRequest, queryset: QuerySet[DiscoveredModel]) -> list[DiscoveredModel]:
        """The selected rows this server can act on; the others are named in an error message.

        With several servers on one database, a model of another server is loaded and unloaded
        by that server (its own admin, or its /admin/load and /admin/unload).
        """
        here = get_config().server.instance
        for row in queryset.exclude(instance=here):
            self.message_user(
                request,
                f"{row.name} is served by {row.instance}, not by this server ({here}): use that server's admin.",
                messages.ERROR,
            )
        return list(queryset.filter(instance=here))

    @admin.action(description="Load now")
    def load_now(self, request: HttpRequest, queryset: QuerySet[DiscoveredModel]) -> None:
        for row in self._rows_served_here(request, queryset):
            try:
                async_to_sync(model_services.model_load)(model=row.name, reason=LoadReason.ADMIN_UI)
            except (ApiError, RuntimeFailure) as exc:
                self.message_user(request, f"{row.name}: {api_error(exc).message}", messages.ERROR)
            else:
                self.message_user(request, f"{row.name} is loaded.", messages.SUCCESS)

    @admin.action(description="Unload now")
    def unload_now(self, request: HttpRequest, queryset: QuerySet[DiscoveredModel]) -> None:
        for row in self._rows_served_here(request, queryset):
            try:
                result = async_to_sync(model_services.model_unload)(model=row.name, reason=LoadReason.ADMIN_UI)
            except (ApiError, RuntimeFailure) as exc:
                self.message_user(request, f"{row.name}: {api_error(exc).message}", messages.ERROR)
                continue
            if result["pending"]:
                self.message_user(request, f"{row.name} unloads when its running requests end.")
            elif result["unloaded"]:
                self.message_user(request, f"{row.name} is unloaded.", messages.SUCCESS)
            else:
                self.message_user(request, f"{row.name} was not loaded.", messages.WARNING)


class HistoryAdmin(admin.ModelAdmin):
    """Read-only: nobody edits history through the admin."""

    date_hierarchy = "created_at"
    list_per_page = 100
    show_full_result_count = False  # counting a million rows on every page view is slow

    @admin.display(description="time", ordering="created_at")
    def time(self, row: Any) -> str:
        return _short_time(row.created_at)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _short_time(moment: datetime | None) -> str:
    """A time in the list pages' narrow columns (the detail page has the full one)."""
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S") if moment else "–"


@admin.register(LoadEvent)
class LoadEventAdmin(HistoryAdmin):
    list_display = ("time", "model", "kind", "reason", "duration_ms", "short_error")
    list_filter = ("kind", "reason", "model", "created_at", "instance")
    search_fields = ("model", "error")

    @admin.display(description="error")
    def short_error(self, row: LoadEvent) -> str:
        return Truncator(row.error).chars(60)


# The routes whose requests are recorded (tests/test_admin_console.py checks it against the URLconf).
RECORDED_ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/rerank",
    "/rerank",
    "/v1/reranking",
    "/v1/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/infill",
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/apply-template",
    "/tokenize",
    "/detokenize",
)


def _choices_filter(
    field: str, lookups: Callable[[], Iterable[str]], *, blank: str = ""
) -> type[admin.SimpleListFilter]:
    """A list filter on `field` offering `lookups()`: Django's own would ask the request records
    for their distinct values, a scan of the whole table (seconds, at a million rows)."""

    class ChoicesFilter(admin.SimpleListFilter):
        title = field.replace("_", " ")
        parameter_name = field

        def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
            return [(value, value or blank) for value in lookups()]

        def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
            value = self.value()
            return queryset if value is None else queryset.filter(**{field: value})

    return ChoicesFilter


def _discovered(field: str) -> Callable[[], list[str]]:
    """The models' names or instances, from the (small) table of discovered models."""
    return lambda: list(DiscoveredModel.objects.order_by(field).values_list(field, flat=True).distinct())


@admin.register(RequestRecord)
class RequestRecordAdmin(HistoryAdmin):
    # What fits at 1,280 px: the client, key, cache and the rest are on the record's page.
    list_display = (
        "time",
        "model",
        "endpoint",
        "outcome",
        "tokens_in_out",
        "ttft_ms",
        "duration_ms",
        "tokens_per_second",
    )
    list_filter = (
        "status",
        _choices_filter("model", _discovered("name")),
        _choices_filter("endpoint", lambda: RECORDED_ENDPOINTS),
        _choices_filter("source", lambda: ("", "playground"), blank="an API client"),
        "stream",
        "created_at",
        _choices_filter("instance", _discovered("instance")),
    )
    date_hierarchy = None  # its months and days are a scan of every record's date
    search_fields = (
        "completion_id",
        "model",
        "error_code",
        "error_message",
        "user_agent",
        "client_address",
        "console_user",
    )

    @admin.display(description="status", ordering="status")
    def outcome(self, row: RequestRecord) -> str:
        return f"{row.status} {row.http_status}"

    @admin.display(description="tokens in / out")
    def tokens_in_out(self, row: RequestRecord) -> str:
        return f"{row.prompt_tokens} / {row.completion_tokens}"


@admin.register(StoredResponse)
class StoredResponseAdmin(HistoryAdmin):
    """Responses API responses kept for GET /v1/responses/{id} and previous_response_id."""

    list_display = ("created_at", "response_id", "model", "status", "api_key", "previous_response_id", "instance")
    list_filter = ("status", "model", "created_at", "instance")
    search_fields = ("response_id", "previous_response_id", "api_key")


class ApiKeyForm(forms.ModelForm):
    models = forms.CharField(
        required=False, help_text="Comma-separated model names the key may use; empty: every model."
    )

    class Meta:
        model = ApiKey
        fields = ("name", "models", "requests_per_minute", "tokens_per_day")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.initial["models"] = ", ".join(self.instance.allowed_models or [])

    def clean_models(self) -> list[str]:
        return [name.strip() for name in self.cleaned_data["models"].split(",") if name.strip()]

    def save(self, commit: bool = True) -> ApiKey:
        self.instance.allowed_models = self.cleaned_data["models"]
        return super().save(commit)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are created here (the secret is shown once), limited, and revoked, never read back."""

    form = ApiKeyForm
    list_display = (
        "name",
        "prefix",
        "models",
        "requests_per_minute",
        "tokens_per_day",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("name", "prefix")
    readonly_fields = ("prefix", "created_at", "last_used_at", "revoked_at")
    actions = ("revoke",)

    @admin.display(description="models")
    def models(self, row: ApiKey) -> str:
        return ", ".join(row.allowed_models) or "all"

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        secret = None if change else key_services.api_key_secret_assign(obj)
        super().save_model(request, obj, form, change)
        if secret:
            self.message_user(
                request, f"The new key's secret (copy it now, it is not shown again): {secret}", messages.WARNING
            )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoke instead: the records keep naming the key

    @admin.action(description="Revoke")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            key_services.api_key_revoke(prefix=key.prefix)
        self.message_user(request, f"Revoked {len(queryset)} key(s).", messages.SUCCESS)
