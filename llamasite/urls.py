from django.urls import include, path

urlpatterns = [
    path("", include("inference.urls")),
]

handler404 = "inference.api.not_found"
handler500 = "inference.api.server_error"
