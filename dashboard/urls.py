from django.urls import path

from dashboard import models, usage

app_name = "dashboard"

urlpatterns = [
    path("", usage.index, name="index"),
    path("export.csv", usage.export_csv, name="export"),
    path("models/", models.index, name="models"),
    path("models/<str:action>/", models.action, name="model-action"),
]
