import time

from django.apps import AppConfig

# Taken when Django loads its apps, i.e. when the server process starts (for /health's uptime).
PROCESS_STARTED = time.monotonic()


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "Inference"
