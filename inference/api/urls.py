"""The API's URLs: OpenAI's and Anthropic's, llama.cpp server's (/tokenize, /detokenize, /infill),
Ollama's (/api/*), the server's own (/health, /metrics) and the admin endpoints."""

from django.urls import path

from inference.api import admin_views, ollama_views, views

urlpatterns = [
    path("health", views.HealthView.as_view()),
    path("metrics", views.prometheus_metrics),
    path("v1/models", views.ModelListView.as_view()),
    path("v1/models/<path:model_id>", views.ModelDetailView.as_view()),
    path("v1/chat/completions", views.ChatCompletionsView.as_view()),
    path("v1/completions", views.CompletionsView.as_view()),
    path("v1/embeddings", views.EmbeddingsView.as_view()),
    path("v1/rerank", views.RerankView.as_view()),
    path("rerank", views.RerankAliasView.as_view()),
    path("v1/reranking", views.RerankAliasView.as_view()),
    path("v1/responses", views.ResponsesView.as_view()),
    path("v1/responses/<str:response_id>", views.ResponseDetailView.as_view()),
    path("v1/responses/<str:response_id>/input_items", views.ResponseInputItemsView.as_view()),
    path("v1/messages", views.MessagesView.as_view()),
    path("v1/messages/count_tokens", views.MessageTokensView.as_view()),
    path("tokenize", views.TokenizeView.as_view()),
    path("detokenize", views.DetokenizeView.as_view()),
    path("apply-template", views.ApplyTemplateView.as_view()),
    path("infill", views.InfillView.as_view()),
    path("api/version", ollama_views.OllamaVersionView.as_view()),
    path("api/tags", ollama_views.OllamaTagsView.as_view()),
    path("api/show", ollama_views.OllamaShowView.as_view()),
    path("api/ps", ollama_views.OllamaPsView.as_view()),
    path("api/chat", ollama_views.OllamaChatView.as_view()),
    path("api/generate", ollama_views.OllamaGenerateView.as_view()),
    path("api/embed", ollama_views.OllamaEmbedView.as_view()),
    path("api/embeddings", ollama_views.OllamaEmbeddingsView.as_view()),
    path("api/pull", ollama_views.OllamaPullView.as_view()),
    path("api/delete", ollama_views.OllamaDeleteView.as_view()),
    path("api/create", ollama_views.OllamaNotServedView.as_view()),
    path("api/copy", ollama_views.OllamaNotServedView.as_view()),
    path("api/push", ollama_views.OllamaNotServedView.as_view()),
    path("api/blobs/<str:digest>", ollama_views.OllamaNotServedView.as_view()),
    # Before the Django admin's admin/ include, which must not swallow these.
    path("admin/models", admin_views.AdminModelsView.as_view()),
    path("admin/load", admin_views.AdminLoadView.as_view()),
    path("admin/unload", admin_views.AdminUnloadView.as_view()),
    path("admin/reload", admin_views.AdminReloadView.as_view()),
    path("admin/reap", admin_views.AdminReapView.as_view()),
]


# What llamasite.asgi hands to the API's handler rather than the pages': each route up to its
# first parameter ("v1/models/<path:model_id>" is everything under "/v1/models/").
API_PATH_PREFIXES = tuple(dict.fromkeys("/" + str(pattern.pattern).split("<")[0] for pattern in urlpatterns))
