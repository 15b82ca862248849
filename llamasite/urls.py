from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularJSONAPIView

urlpatterns = [
    path("", include("inference.api.urls")),  # first: its /admin/* API must not reach the Django admin
    path("openapi.json", SpectacularJSONAPIView.as_view(), name="openapi"),
    path("admin/", admin.site.urls),
    path("dashboard/", include("dashboard.urls")),
]

handler404 = "inference.api.views.not_found"
handler500 = "inference.api.views.server_error"
