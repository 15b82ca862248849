from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "Inference"

    def ready(self) -> None:
        from prometheus_client import REGISTRY

        from inference.records.metrics import ModelStateCollector, lifecycle_event_count
        from inference.runtime.lifecycle import model_lifecycle
        from inference.runtime.pool import register_settings_overrides
        from inference.services.models import load_event_record, model_settings_overrides

        model_lifecycle.connect(load_event_record, dispatch_uid="load_event_record")
        model_lifecycle.connect(lifecycle_event_count, dispatch_uid="lifecycle_event_count")
        REGISTRY.register(ModelStateCollector())
        register_settings_overrides(model_settings_overrides)
