from django.urls import path

from dashboard import models_page, playground, pull, usage

app_name = "dashboard"

urlpatterns = [
    path("", usage.index, name="index"),
    path("export.csv", usage.export_csv, name="export"),
    path("playground/", playground.playground, name="playground"),
    path("pull/", pull.page, name="pull"),
    path("pull/<str:job_id>/cancel/", pull.cancel, name="pull-cancel"),
    path("models/", models_page.index, name="models"),
    path("models/<str:action>/", models_page.action, name="model-action"),
]
