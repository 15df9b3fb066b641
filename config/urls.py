from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerView,
)

from messagebus.ops import prometheus
from messagebus.ops.health import health

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health/", health, name="health"),
    path("metrics", prometheus.view, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path(
        "api/redoc/",
        SpectacularRedocView.as_view(url_name="schema", template_name="allocation/redoc.html"),
        name="redoc",
    ),
    path("", include("allocation.api.urls")),
]

handler400 = "allocation.api.exceptions.bad_request"
handler403 = "allocation.api.exceptions.permission_denied"
handler404 = "allocation.api.exceptions.not_found"
handler500 = "allocation.api.exceptions.server_error"
