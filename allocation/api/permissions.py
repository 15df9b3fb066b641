from typing import Any

from django.conf import settings
from rest_framework.permissions import DjangoModelPermissions
from rest_framework.request import Request


class ModelPermissionsOrAnonymous(DjangoModelPermissions):
    """Reads need a signed-in user, writes the model permission (``add_batch``...).

    With ``settings.API_ALLOW_ANONYMOUS`` (the local demo), anyone may do anything.
    A method the view does not have is left to the view to answer 405.
    """

    def has_permission(self, request: Request, view: Any) -> bool:
        if settings.API_ALLOW_ANONYMOUS or not hasattr(view, str(request.method).lower()):
            return True
        return super().has_permission(request, view)
