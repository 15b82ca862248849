"""What the server records in the database: the models it found and their load history.

Rows carry the `instance` (server.instance_name, default host:port) of the server that wrote
them, so several servers can share one database.
"""

from __future__ import annotations

from django.db import models

from inference.lifecycle import LifecycleKind, LoadReason


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
    present = models.BooleanField(default=True)
    first_seen_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField()
    missing_since = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["instance", "name"], name="unique_model_per_instance")
        ]

    def __str__(self) -> str:
        return self.name


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
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.model} ({self.reason})"
