from django.urls import path

from inference import api

urlpatterns = [
    path("health", api.HealthView.as_view()),
    path("v1/models", api.ModelListView.as_view()),
    path("v1/models/<path:model_id>", api.ModelDetailView.as_view()),
    path("v1/chat/completions", api.ChatCompletionsView.as_view()),
]
