from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"
    verbose_name = "Usage dashboard"

    def ready(self) -> None:
        from django.contrib import admin
        from django.urls import reverse_lazy

        # The admin is the console's back office: ours by name, its home linking the console
        # pages, and its "View site" opening them.
        admin.site.site_header = admin.site.site_title = "llamasite"
        admin.site.index_title = "Administration"
        admin.site.site_url = reverse_lazy("dashboard:index")
        admin.site.index_template = "dashboard/admin_index.html"
        admin.site.enable_nav_sidebar = False  # its 300 px hid the list pages' columns at 1,280 px
