"""OpenAPI description of API token authentication (loaded by ``AccountsConfig.ready``)."""

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiTokenAuthentication"
    name = "ApiToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "sk-live-<prefix>-<secret>",
            "description": "An API token. Each endpoint names the scope it needs.",
        }
