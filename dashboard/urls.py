from django.urls import path

from dashboard import playground, usage

app_name = "dashboard"

urlpatterns = [
    path("", usage.index, name="index"),
    path("export.csv", usage.export_csv, name="export"),
    path("playground/", playground.playground, name="playground"),
]
