"""The API's URLs: OpenAI's and Anthropic's, the server's own (/health, /metrics) and the admin
endpoints."""

from django.urls import path

from inference import api

urlpatterns = [
    path("health", api.HealthView.as_view()),
    path("metrics", api.prometheus_metrics),
    path("v1/models", api.ModelListView.as_view()),
    path("v1/models/<path:model_id>", api.ModelDetailView.as_view()),
    path("v1/chat/completions", api.ChatCompletionsView.as_view()),
    path("v1/completions", api.CompletionsView.as_view()),
    path("v1/embeddings", api.EmbeddingsView.as_view()),
    path("v1/responses", api.ResponsesView.as_view()),
    path("v1/responses/<str:response_id>", api.ResponseDetailView.as_view()),
    path("v1/responses/<str:response_id>/input_items", api.ResponseInputItemsView.as_view()),
    path("v1/messages", api.MessagesView.as_view()),
    path("v1/messages/count_tokens", api.MessageTokensView.as_view()),
    # Before the Django admin's admin/ include, which must not swallow these.
    path("admin/models", api.AdminModelsView.as_view()),
    path("admin/load", api.AdminLoadView.as_view()),
    path("admin/unload", api.AdminUnloadView.as_view()),
    path("admin/reload", api.AdminReloadView.as_view()),
    path("admin/reap", api.AdminReapView.as_view()),
]


# What llamasite.asgi hands to the API's handler rather than the pages': each route up to its
# first parameter ("v1/models/<path:model_id>" is everything under "/v1/models/").
API_PATH_PREFIXES = tuple(dict.fromkeys("/" + str(pattern.pattern).split("<")[0] for pattern in urlpatterns))
