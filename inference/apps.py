import time

from django.apps import AppConfig

# Taken when Django loads its apps, i.e. when the server process starts (for /health's uptime).
PROCESS_STARTED = time.monotonic()


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "Inference"

    def ready(self) -> None:
        from inference.lifecycle import model_lifecycle
        from inference.manager import register_settings_overrides
        from inference.services import load_event_record, model_settings_overrides

        model_lifecycle.connect(load_event_record, dispatch_uid="load_event_record")
        register_settings_overrides(model_settings_overrides)
