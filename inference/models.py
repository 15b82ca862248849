"""What the server records in the database: the models it found and their load history.

Rows carry the `instance` (server.instance_name, default host:port) of the server that wrote
them, so several servers can share one database.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from inference import histograms
from inference.config import KV_CACHE_TYPES
from inference.runtime.lifecycle import LifecycleKind, LoadReason


def _json_object(value: Any) -> None:
    if value is not None and not isinstance(value, dict):
        raise ValidationError("Enter a JSON object, e.g. {}.")


# The KV cache's element types (llama.cpp's --cache-type-k/-v): less memory per cell for a little quality.
KV_CACHE_CHOICES = [(name, name) for name in KV_CACHE_TYPES]


class DiscoveredModel(models.Model):
    """A .gguf file found in the models directory; kept (marked missing) when the file goes."""

    instance = models.CharField(max_length=200)
    name = models.CharField(max_length=255)
    path = models.CharField(max_length=4096)
    size_bytes = models.BigIntegerField()
    file_modified_at = models.DateTimeField()
    architecture = models.CharField(max_length=100, blank=True)
    parameter_count = models.BigIntegerField(null=True, blank=True)
    quantization = models.CharField(max_length=50, blank=True)
    context_length = models.IntegerField(null=True, blank=True, help_text="Trained context length")
    header_error = models.TextField(blank=True, help_text="Why the GGUF header could not be read")
    projector = models.CharField(
        max_length=4096, blank=True, help_text="Its multimodal projector (mmproj file); empty: it takes text only"
    )
    present = models.BooleanField(default=True)
    first_seen_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField()
    missing_since = models.DateTimeField(null=True, blank=True)

    # Settings saved in the admin; empty means config.json's. Applied at the model's next load.
    n_ctx = models.PositiveIntegerField(null=True, blank=True, verbose_name="n_ctx")
    n_gpu_layers = models.IntegerField(
        null=True, blank=True, verbose_name="n_gpu_layers", validators=[MinValueValidator(-1)]
    )
    idle_timeout = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(-1)],
        help_text="Seconds; 0 = unload after each request, -1 = never",
    )
    pinned = models.BooleanField(null=True, blank=True, help_text="Never unloaded for idleness or room")
    chat_template = models.TextField(
        null=True, blank=True, help_text="Jinja chat template used in place of the GGUF's own"
    )
    chat_template_kwargs = models.JSONField(
        null=True,
        blank=True,
        validators=[_json_object],
        help_text='Passed to the template, e.g. {"enable_thinking": false}',
    )
    reasoning_format = models.CharField(
        max_length=8,
        null=True,
        blank=True,
        choices=[("auto", "auto: thinking apart"), ("none", "none: thinking in the answer")],
    )
    reasoning_budget = models.IntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(-1)],
        help_text="Most tokens a request may think; -1 = no limit",
    )

    type_k = models.CharField(
        max_length=8, null=True, blank=True, choices=KV_CACHE_CHOICES, help_text="The KV cache's keys"
    )
    type_v = models.CharField(
        max_length=8,
        null=True,
        blank=True,
        choices=KV_CACHE_CHOICES,
        help_text="The KV cache's values (quantized: flash attention must not be off)",
    )
    reranker = models.CharField(
        max_length=8,
        null=True,
        blank=True,
        choices=[("auto", "auto: as the GGUF says"), ("rank", "rank: a reranker's head"), ("yes_no", "yes_no: P(yes)")],
        help_text="How /v1/rerank scores on it",
    )

    SETTING_FIELDS = (
        "n_ctx",
        "n_gpu_layers",
        "idle_timeout",
        "pinned",
        "chat_template",
        "chat_template_kwargs",
        "reasoning_format",
        "reasoning_budget",
        "type_k",
        "type_v",
        "reranker",
    )

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["instance", "name"], name="unique_model_per_instance")]

    def __str__(self) -> str:
        return self.name

    def setting_overrides(self) -> dict[str, Any]:
        """The settings saved for it in the admin (those left empty are not overrides)."""
        return {key: value for key in self.SETTING_FIELDS if (value := getattr(self, key)) not in (None, "")}


class LoadEvent(models.Model):
    """One load, failed load or unload of a model."""

    Kind = models.TextChoices("Kind", [(kind.value, kind.value) for kind in LifecycleKind])
    Reason = models.TextChoices("Reason", [(reason.value, reason.value) for reason in LoadReason])

    instance = models.CharField(max_length=200)
    model = models.CharField(max_length=255, db_index=True)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    reason = models.CharField(max_length=20, choices=Reason.choices)
    duration_ms = models.FloatField()
    settings = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    # When it happened, set by the server (not when written: it may wait for the database).
    created_at = models.DateTimeField(default=timezone.now, editable=False, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.model} ({self.reason})"


class RequestRecord(models.Model):
    """One request that reached an inference endpoint: succeeded, failed or cancelled."""

    class Status(models.TextChoices):
        OK = "ok"
        ERROR = "error"
        CANCELLED = "cancelled"

    instance = models.CharField(max_length=200)
    completion_id = models.CharField(max_length=64, blank=True)
    model = models.CharField(max_length=255, blank=True)
    endpoint = models.CharField(max_length=100)
    stream = models.BooleanField(default=False)
    status = models.CharField(max_length=10, choices=Status.choices)
    http_status = models.PositiveSmallIntegerField()
    error_code = models.CharField(max_length=100, blank=True)
    error_message = models.TextField(blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0, help_text="Of the prompt tokens, found in a cache")
    cache_tier = models.CharField(max_length=8, blank=True, help_text="Where: slot, ram, disk")
    completion_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0, help_text="Of the completion tokens, spent thinking")
    images = models.PositiveIntegerField(
        default=0, help_text="Images in the prompt (their tokens count as prompt tokens)"
    )
    finish_reason = models.CharField(max_length=20, blank=True)
    queue_wait_ms = models.FloatField(null=True, blank=True)
    load_ms = models.FloatField(null=True, blank=True, help_text="Set if this request loaded the model")
    ttft_ms = models.FloatField(null=True, blank=True, help_text="Time to first token")
    duration_ms = models.FloatField()
    tokens_per_second = models.FloatField(null=True, blank=True)
    draft_tokens_proposed = models.PositiveIntegerField(
        default=0, help_text="Tokens guessed by speculative decoding (model_manager.speculative), all choices"
    )
    draft_tokens_accepted = models.PositiveIntegerField(default=0, help_text="Of those, the ones the model confirmed")
    client_address = models.CharField(max_length=100, blank=True)
    user_agent = models.CharField(max_length=500, blank=True)
    end_user = models.CharField(max_length=256, blank=True, help_text="The request's `user` field")
    api_key = models.CharField(max_length=16, blank=True, help_text="The key's prefix; empty: no key")
    source = models.CharField(
        max_length=20, blank=True, help_text="The console page that sent it; empty: an API client"
    )
    console_user = models.CharField(max_length=150, blank=True, help_text="The staff user signed in to that page")
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["model", "created_at"]),
            models.Index(fields=["api_key", "created_at"]),  # a key's tokens today
            # The dashboard's slowest requests: read in duration order, not sorted in full.
            models.Index(fields=["status", "duration_ms"]),
        ]

    def __str__(self) -> str:
        return f"{self.endpoint} {self.model} {self.status}"


class DailyUsage(models.Model):
    """Per model and UTC day: the totals of its request records and histograms of their speed.

    Kept up to date as each record is written, so usage over long ranges never reads the
    records themselves.
    """

    instance = models.CharField(max_length=200)
    day = models.DateField()
    model = models.CharField(max_length=255, blank=True)
    api_key = models.CharField(max_length=16, blank=True, help_text="The key's prefix; empty: no key")
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    cancelled = models.PositiveIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    ttft_ms_histogram = models.JSONField(default=list)
    tokens_per_second_histogram = models.JSONField(default=list)

    class Meta:
        ordering = ["day", "model"]
        constraints = [
            models.UniqueConstraint(fields=["instance", "day", "model", "api_key"], name="unique_daily_usage")
        ]

    # The RequestRecord columns that count_request takes, in its order.
    COUNTED_COLUMNS = ("status", "prompt_tokens", "completion_tokens", "ttft_ms", "tokens_per_second")

    def count_request(
        self,
        status: str,
        prompt_tokens: int,
        completion_tokens: int,
        ttft_ms: float | None,
        tokens_per_second: float | None,
    ) -> None:
        """Count one request in (not saved)."""
        self.requests += 1
        self.errors += status == RequestRecord.Status.ERROR
        self.cancelled += status == RequestRecord.Status.CANCELLED
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        if ttft_ms is not None:
            self.ttft_ms_histogram = histograms.added(self.ttft_ms_histogram, histograms.TTFT_MS_BOUNDS, ttft_ms)
        if tokens_per_second is not None:
            self.tokens_per_second_histogram = histograms.added(
                self.tokens_per_second_histogram, histograms.TOKENS_PER_SECOND_BOUNDS, tokens_per_second
            )

    def count_usage(self, other: DailyUsage) -> None:
        """Add another tally's counts (not saved)."""
        for name in ("requests", "errors", "cancelled", "prompt_tokens", "completion_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.ttft_ms_histogram = histograms.merged(
            [self.ttft_ms_histogram, other.ttft_ms_histogram], histograms.TTFT_MS_BOUNDS
        )
        self.tokens_per_second_histogram = histograms.merged(
            [self.tokens_per_second_histogram, other.tokens_per_second_histogram],
            histograms.TOKENS_PER_SECOND_BOUNDS,
        )

    def figures(self) -> dict[str, Any]:
        """The summary figures (percentiles interpolated within histogram buckets)."""

        def percentile(histogram: list[int], bounds: tuple[float, ...], fraction: float) -> float | None:
            value = histograms.percentile(histogram, bounds, fraction)
            return None if value is None else round(value, 1)

        return {
            "requests": self.requests,
            "errors": self.errors,
            "cancelled": self.cancelled,
            "error_rate": self.errors / self.requests if self.requests else 0.0,
            "cancel_rate": self.cancelled / self.requests if self.requests else 0.0,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_ms_p50": percentile(self.ttft_ms_histogram, histograms.TTFT_MS_BOUNDS, 0.5),
            "ttft_ms_p95": percentile(self.ttft_ms_histogram, histograms.TTFT_MS_BOUNDS, 0.95),
            "tokens_per_s_p50": percentile(self.tokens_per_second_histogram, histograms.TOKENS_PER_SECOND_BOUNDS, 0.5),
        }


class ApiKey(models.Model):
    """A client's key for /v1/*: stored hashed; only its prefix is shown after creation."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    hashed = models.CharField(max_length=64, editable=False)
    allowed_models = models.JSONField(default=list, blank=True, help_text="Model names; empty: every model")
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_day = models.PositiveIntegerField(
        null=True, blank=True, help_text="Prompt and completion tokens per UTC day"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class StoredResponse(models.Model):
    """A Responses API response created with `store` (the default): retrievable, deletable and
    continued by `previous_response_id`, only with the key it was created with."""

    response_id = models.CharField(max_length=64, unique=True)
    instance = models.CharField(max_length=200)
    api_key = models.CharField(max_length=16, blank=True, help_text="The key's prefix; empty: no key")
    model = models.CharField(max_length=255)
    status = models.CharField(max_length=20)
    previous_response_id = models.CharField(max_length=64, blank=True)
    body = models.JSONField(help_text="The response object, as it was returned")
    input_items = models.JSONField(default=list, help_text="This request's input items")
    history = models.JSONField(default=list, help_text="The items before them (earlier turns)")
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.response_id} ({self.model})"

    @property
    def conversation(self) -> list[dict[str, Any]]:
        """Every item of the conversation so far: earlier turns, this input, this output."""
        return [*self.history, *self.input_items, *self.body.get("output", [])]
