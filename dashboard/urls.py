from django.urls import path

from dashboard import playground, pull, usage

app_name = "dashboard"

urlpatterns = [
    path("", usage.index, name="index"),
    path("export.csv", usage.export_csv, name="export"),
    path("playground/", playground.playground, name="playground"),
    path("pull/", pull.page, name="pull"),
    path("pull/<str:job_id>/cancel/", pull.cancel, name="pull-cancel"),
]
