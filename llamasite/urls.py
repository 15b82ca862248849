from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularJSONAPIView

urlpatterns = [
    path("", include("inference.urls")),  # first: its /admin/* API must not reach the Django admin
    path("openapi.json", SpectacularJSONAPIView.as_view(), name="openapi"),
    path("admin/", admin.site.urls),
    path("dashboard/", include("dashboard.urls")),
]

handler404 = "inference.api.not_found"
handler500 = "inference.api.server_error"
